// 1,000 writes by 4 writers, each its own client with a live collection,
// through a proxy that cuts every connection 20 times: at the end every
// live collection equals the database (read over REST), and every write
// took effect once.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { NotFoundError } from "../src/index.js";
import type { Question } from "../examples/polls.js";
import { App, CuttingProxy, connect, opened, restAll, servesIdempotencyKeys, until } from "./harness.js";

const writers = 4;
const writesEach = 250;
const cuts = 20;
const cutEvery = (writers * writesEach) / cuts;

const app = new App();
const proxy = new CuttingProxy(() => app.port);
before(async () => {
  await app.start();
  await proxy.listen();
});
after(async () => {
  await proxy.close();
  await app.stop();
});

function byPK(rows: readonly Question[]): Question[] {
  return [...rows].sort((a, b) => a.id - b.id);
}

test(`${cuts} forced disconnects during ${writers * writesEach} writes by ${writers} writers`, async (t) => {
  const tokens = ["alice-token", "bob-token", "admin-token", undefined];
  // Writes in flight are sent again even where the schema does not promise
  // idempotency keys: the checks below say whether that made duplicates.
  const clients = tokens.map((tok) => connect(proxy.url, tok));
  try {
    const lives = clients.map((c) => c.stream("questions").live({ ordering: ["id"] }));
    await Promise.all(lives.map((l) => l.ready));

    // What the writes that succeeded leave: pk -> text. texts: every text a create sent.
    const expected = new Map<number, string>();
    const texts = new Set<string>();
    const failed: string[] = [];
    let done = 0;
    let cutting = Promise.resolve();
    const completed = () => {
      done++;
      if (done % cutEvery === cutEvery / 2) {
        // Cut once every client is connected, so that each cut ends all four.
        cutting = cutting.then(async () => {
          await Promise.all(clients.map(opened));
          proxy.cut();
        });
      }
    };

    const write = async (w: number) => {
      const qs = clients[w]!.stream("questions");
      const mine: number[] = [];
      for (let n = 0; n < writesEach; n++) {
        const text = `w${w}-${n}`;
        try {
          if (n % 5 < 2 || mine.length === 0) {
            texts.add(text);
            const q = await qs.create({ question_text: text });
            mine.push(q.id);
            expected.set(q.id, text);
          } else if (n % 5 < 4) {
            const pk = mine[(n * 7) % mine.length]!;
            await qs.patch(pk, { question_text: text });
            expected.set(pk, text);
          } else {
            const pk = mine.shift()!;
            try {
              await qs.delete(pk);
            } finally {
              expected.delete(pk);
            }
          }
        } catch (e) {
          failed.push(`${text}: ${e instanceof Error ? e.message : String(e)}`);
          if (!(e instanceof NotFoundError)) throw e;
        }
        completed();
      }
    };
    await Promise.all(Array.from({ length: writers }, (_, w) => write(w)));
    await cutting;

    const db = byPK(await restAll<Question>(app.base, "/api/questions"));
    for (const [i, live] of lives.entries()) {
      await until(
        (fn) => live.on(fn),
        () => JSON.stringify(live.items) === JSON.stringify(db),
        20_000,
        () => `client ${i}: ${live.size} rows, the database ${db.length}`,
      );
    }

    const retried = clients.reduce((n, c) => n + c.stats.retried, 0);
    const replayed = clients.reduce((n, c) => n + c.stats.replayed, 0);
    const extra = db.filter((r) => !expected.has(r.id));
    const lost = [...expected].filter(([pk, text]) => db.find((r) => r.id === pk)?.question_text !== text);
    t.diagnostic(
      `cuts ${proxy.cuts}; writes retried ${retried}, replayed ${replayed}; rows ${db.length}, expected ${expected.size}; ` +
        `duplicated creates ${extra.length}; failed writes ${failed.length}; reloads ${lives.map((l) => l.reloads)}`,
    );

    assert.equal(proxy.cuts, cuts);
    for (const c of clients) {
      assert.equal(c.stats.disconnects, cuts);
      assert.equal(c.stats.connects, cuts + 1);
    }
    assert.deepEqual(lost, [], "writes that succeeded but are not in the database");
    // A write retried after a cut runs once: the server keeps idempotency
    // keys (PROTOCOL.md section 11).
    assert.ok(await servesIdempotencyKeys(app.base), "the example app keeps idempotency keys");
    assert.deepEqual(extra, [], "duplicated creates");
    assert.deepEqual(failed, [], "failed writes");
    assert.deepEqual(db.map((r) => [r.id, r.question_text]), [...expected].sort((a, b) => a[0] - b[0]));
  } finally {
    for (const c of clients) c.close();
  }
});
