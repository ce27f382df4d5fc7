// tsc --noEmit --strict on the package and on the usage sample passes; on a
// sample with a wrong field name it fails with the expected diagnostic.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { packageDir } from "./harness.js";

const tsc = path.join(packageDir, "node_modules", "typescript", "bin", "tsc");
const fileOptions = ["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", "--types", "node"];

/** Runs tsc; the three checks start at once, each test awaits its own. */
function run(args: string[]): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [tsc, ...args], { cwd: packageDir });
    let out = "";
    p.stdout.on("data", (b: Buffer) => (out += b.toString()));
    p.stderr.on("data", (b: Buffer) => (out += b.toString()));
    p.on("error", reject);
    p.on("close", (status) => resolve({ status, out }));
  });
}

const pkg = run(["-p", "tsconfig.json", "--noEmit", "--strict"]);
const usage = run([...fileOptions, "examples/usage.ts"]);
const bad = run([...fileOptions, "examples/bad/wrong-field.ts"]);

test("the package type-checks with --strict", async () => {
  const r = await pkg;
  assert.equal(r.status, 0, r.out);
});

test("the usage sample type-checks with --strict", async () => {
  const r = await usage;
  assert.equal(r.status, 0, r.out);
});

test("a wrong field name in a sample is a type error", async () => {
  const r = await bad;
  assert.notEqual(r.status, 0, r.out);
  assert.match(r.out, /examples\/bad\/wrong-field\.ts\(8,\d+\): error TS2561: Object literal may only specify known properties, but 'question_txt' does not exist in type 'QuestionWrite'/);
});
