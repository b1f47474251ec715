'use strict';

// The worker test/outside_round5.test.js runs: results, errors, chunks and
// host-call arguments of a size the test picks, to meet the pool's frame
// limit (SNAKEPIT_MAX_FRAME_SIZE).

const { Worker, HostCallError } = require('snakepit-bridge');

new Worker({
  commands: {
    limit: (args, ctx) => ctx.worker.maxFrameSize,
    exit: (args) => process.exit(args.code),
    note(args) {
      console.error(`round5: note ${args.text}`);
      return args.text;
    },
    big: (args) => 'x'.repeat(args.n),
    fail: (args) => {
      throw new RangeError('e'.repeat(args.n));
    },
    chunks(args, ctx) {
      const first = ctx.sendChunk('small');
      const large = ctx.sendChunk('y'.repeat(args.n));
      const after = ctx.sendChunk('after');
      console.error(`round5: sendChunk gave ${first} ${large} ${after}`);
      return 'the end';
    },
    async host(args, ctx) {
      try {
        await ctx.callHost('session.get', { key: 'k'.repeat(args.n) });
        return 'sent';
      } catch (err) {
        return { name: err.name, type: err.type, message: err.message, hostCallError: err instanceof HostCallError };
      }
    },
    hostUncaught: (args, ctx) => ctx.callHost('session.get', { key: 'k'.repeat(args.n) }),
  },
}).run();
