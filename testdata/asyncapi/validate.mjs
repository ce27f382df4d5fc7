// Checks an AsyncAPI document with the official parser: node validate.mjs
// <file>. Prints the diagnostics of severity error (0) and warning (1) as
// JSON lines and exits 1 when there is an error, 0 otherwise
// (apidoc_test.go).
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const file = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(file, 'utf8'));
let failed = document === undefined;
for (const d of diagnostics) {
  if (d.severity > 1) continue; // information and hints
  if (d.severity === 0) failed = true;
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
process.exit(failed ? 1 : 0);
