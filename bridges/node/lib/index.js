'use strict';

// Public API of snakepit-bridge: write a Snakepit worker in Node.js.
//
//   const { Worker } = require('snakepit-bridge');
//   new Worker({ commands: { async greet(args, ctx) { return `hi ${args.name}`; } } }).run();

const wire = require('./wire');
const worker = require('./worker');
const generic = require('./generic');

// Under a pool (which sets SNAKEPIT_PROTOCOL) stdout and stdin are taken
// over as soon as the bridge is loaded, so that a script printing at load
// time, before it calls worker.run(), cannot corrupt the first frame, nor
// code reading process.stdin take or pause the frames. Elsewhere (tests,
// tools) loading the bridge has no side effects; run() protects them then.
if (process.env.SNAKEPIT_PROTOCOL) {
  worker.protectStdout();
  worker.protectStdin();
}

// One assignment per name, so that Node finds every name when an ES module
// imports this file (`import { genericCommands } from 'snakepit-bridge'`):
// its static scan of a CommonJS module sees `exports.name = ...`, but stops
// at the first property of `module.exports = {...}` whose value is not a
// plain identifier, which left Worker as the only named export.
exports.Worker = worker.Worker;
exports.Context = worker.Context;
exports.CancelledError = worker.CancelledError;
exports.HostCallError = worker.HostCallError;
exports.WireError = wire.WireError;
exports.genericCommands = generic.genericCommands;
exports.BRIDGE_NAME = worker.BRIDGE_NAME;
exports.VERSION = worker.BRIDGE_VERSION;
exports.PROTOCOL_VERSION = wire.PROTOCOL_VERSION;
exports.protectStdout = worker.protectStdout;
exports.wire = wire;
