// Runs an ES module worker (`.mjs`) for the host: `node esm_main.mjs
// worker.mjs ...`. An ES module does not look in NODE_PATH, so this first
// registers a resolve hook (Node 20.6 and later, 18.19 and later) that
// finds `snakepit-bridge` in the bundled copy, as `require` does through
// NODE_PATH; then it runs the worker as the main script. On an older Node
// the worker runs without the hook (`createRequire` still finds the bridge).
import * as nodeModule from 'node:module';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

// Under a pool, stdout and stdin are protected before any of the user's
// code runs: the modules a worker imports are run before its own body, so
// one that prints when loaded, imported ahead of the bridge, would write
// into the frame stream. Loading the bridge here does it (lib/index.js);
// the worker's own import of it finds the same module, already loaded.
if (process.env.SNAKEPIT_PROTOCOL) {
  nodeModule.createRequire(import.meta.url)('./lib/index.js');
}
if (typeof nodeModule.register === 'function') {
  nodeModule.register('./esm_hooks.mjs', import.meta.url);
}
const script = resolve(process.argv[2]);
// The worker sees itself as the script Node ran, with the absolute path
// Node gives the script it runs in process.argv[1] (the pool passes the
// path as the user named it, which may be relative).
process.argv.splice(1, 2, script);
await import(pathToFileURL(script).href);
