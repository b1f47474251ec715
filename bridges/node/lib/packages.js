'use strict';

// Where the bridge looks for the packages it uses only when present
// (MessagePack in wire.js, OpenTelemetry in worker.js): where the user's
// worker script would find them.

const path = require('path');
const { createRequire } = require('module');

// Loaders, in order: beside the script (`require.main`; an ES module script
// has none, so its own path, in process.argv[1], stands in),
// then from the working directory. Each takes a package name and returns
// the package, or throws (`MODULE_NOT_FOUND` when it is not there).
function userRequires() {
  const loaders = [];
  if (require.main && typeof require.main.require === 'function') {
    loaders.push((name) => require.main.require(name));
  }
  if (typeof createRequire === 'function') {
    // process.argv[1] is the script whatever its name: the launcher puts
    // the ES module's path there, and an ES module may have no extension
    // (Node runs one in a package of "type": "module").
    process.argv.slice(1).forEach((arg, i) => {
      if (typeof arg === 'string' && (i === 0 || /\.(mjs|cjs|js)$/.test(arg))) {
        loaders.push((name) => createRequire(path.resolve(arg))(name));
      }
    });
    loaders.push((name) => createRequire(process.cwd() + '/')(name));
  }
  return loaders;
}

module.exports = { userRequires };
