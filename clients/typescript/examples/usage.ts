// A usage sample of the client with the example app's generated types:
// `tsc --noEmit --strict` checks it (test/typecheck.test.ts).
import WebSocket from "ws";
import { Client, NotFoundError, ValidationError } from "../src/index.js";
import { schema, type Question, type Streams } from "./polls.js";

export async function usage(url: string, token: string): Promise<readonly Question[]> {
  const client = new Client<Streams>({ url, schema, WebSocket, protocols: ["bearer", token] });
  const questions = client.stream("questions");

  const q = await questions.create({ question_text: "Why?" });
  await questions.patch(q.id, { question_text: "Why not?" });
  const page = await questions.list({ filters: { question_text__icontains: "why" }, ordering: ["-pub_date", "id"] });
  console.log(page.count, page.results.map((r) => r.question_text));

  const choices = client.stream("choices");
  const c = await choices.create({ question_id: q.id, choice_text: "Because", votes: 0 });
  await choices.action("vote", c.id);

  try {
    await questions.create({ question_text: "" });
  } catch (e) {
    if (e instanceof ValidationError) console.log(e.fieldErrors["question_text"]);
  }
  try {
    await questions.retrieve(-1);
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
  }

  const live = questions.live({ filters: { question_text__icontains: "why" }, ordering: ["-pub_date"] });
  await live.ready;
  live.on((change) => console.log(change.type, live.items.length));

  const notes = client.stream("notes");
  const mine = notes.live();
  await mine.ready;
  const n = await notes.create({ text: "private" });
  // n.owner_id = 2; // readonly: a compile error
  console.log(n.owner_id, mine.size);

  const items = live.items;
  live.close();
  client.close();
  return items;
}
