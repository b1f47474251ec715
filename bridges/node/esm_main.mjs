// Runs an ES module worker (`.mjs`) for the host: `node esm_main.mjs
// worker.mjs ...`. An ES module does not look in NODE_PATH, so this first
// registers a resolve hook (Node 20.6 and later, 18.19 and later) that
// finds `snakepit-bridge` in the bundled copy, as `require` does through
// NODE_PATH; then it runs the worker as the main script. On an older Node
// the worker runs without the hook (`createRequire` still finds the bridge).
import * as nodeModule from 'node:module';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

if (typeof nodeModule.register === 'function') {
  nodeModule.register('./esm_hooks.mjs', import.meta.url);
}
const script = process.argv[2];
// The worker sees itself as the script Node ran.
process.argv.splice(1, 1);
await import(pathToFileURL(resolve(script)).href);
