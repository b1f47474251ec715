'use strict';

// Where the bridge looks for the packages it uses only when present
// (MessagePack in wire.js, OpenTelemetry in worker.js): where the user's
// worker script would find them.

const path = require('path');
const { createRequire } = require('module');

// Loaders, in order: beside the script (`require.main`; an ES module script
// has none, so its own path, the launcher's argument after it, stands in),
// then from the working directory. Each takes a package name and returns
// the package, or throws (`MODULE_NOT_FOUND` when it is not there).
function userRequires() {
  const loaders = [];
  if (require.main && typeof require.main.require === 'function') {
    loaders.push((name) => require.main.require(name));
  }
  if (typeof createRequire === 'function') {
    for (const arg of process.argv.slice(1)) {
      if (typeof arg === 'string' && /\.(mjs|cjs|js)$/.test(arg)) {
        loaders.push((name) => createRequire(path.resolve(arg))(name));
      }
    }
    loaders.push((name) => createRequire(process.cwd() + '/')(name));
  }
  return loaders;
}

module.exports = { userRequires };
