// A sample that must not compile: "question_txt" is not a field of
// QuestionWrite (test/typecheck.test.ts asserts tsc reports it).
import WebSocket from "ws";
import { Client } from "../../src/index.js";
import { schema, type Streams } from "../polls.js";

const client = new Client<Streams>({ url: "ws://127.0.0.1:1/ws", schema, WebSocket });
await client.stream("questions").create({ question_txt: "Why?" });
