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

module.exports = {
  Worker: worker.Worker,
  Context: worker.Context,
  CancelledError: worker.CancelledError,
  HostCallError: worker.HostCallError,
  WireError: wire.WireError,
  genericCommands: generic.genericCommands,
  BRIDGE_NAME: worker.BRIDGE_NAME,
  VERSION: worker.BRIDGE_VERSION,
  PROTOCOL_VERSION: wire.PROTOCOL_VERSION,
  protectStdout: worker.protectStdout,
  wire,
};
