// Run by `npm test` before the tests: builds the example app once into
// build/example-app (unless CHANNELSAPI_EXAMPLE_BIN names one already).
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { builtExample, repoRoot } from "./harness.js";

if (process.env["CHANNELSAPI_EXAMPLE_BIN"]) {
  fs.rmSync(builtExample, { force: true });
} else {
  execFileSync("go", ["build", "-o", builtExample, "./example"], { cwd: repoRoot, stdio: "inherit" });
}
