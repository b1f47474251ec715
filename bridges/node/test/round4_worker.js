'use strict';

// The worker of test/outside_round4.test.js. Handlers that report what
// they saw keep it in `seen`, read back with the `report` command.

const { Worker, genericCommands } = require('snakepit-bridge');

const seen = {};

new Worker({
  commands: {
    ...genericCommands(),

    // A native promise whose `constructor` is a getter that throws:
    // `await` rejects with that error.
    ctorThrows() {
      const p = Promise.resolve('never seen');
      Object.defineProperty(p, 'constructor', {
        get() {
          throw new TypeError('constructor getter');
        },
      });
      return p;
    },

    // Replies once the host answers the host call `gate`.
    async gate(args, ctx) {
      return { gate: await ctx.callHost('gate', {}) };
    },

    // Streams one chunk, then waits until cancelled; a listener on the
    // signal tries one more chunk.
    streamUntilCancel(args, ctx) {
      ctx.signal.addEventListener('abort', () => {
        seen[ctx.requestId] = { cancelled: ctx.cancelled, sent: ctx.sendChunk('after cancel') };
      });
      ctx.sendChunk('first');
      return new Promise(() => {});
    },

    // One host call; reports how it failed, hostTraceback included.
    async host(args, ctx) {
      try {
        return { ok: await ctx.callHost('f', {}) };
      } catch (err) {
        return {
          name: err.name,
          type: err.type,
          message: err.message,
          hasHostTraceback: 'hostTraceback' in err,
          hostTracebackType: typeof err.hostTraceback,
          hostTraceback: err.hostTraceback === undefined ? null : err.hostTraceback,
        };
      }
    },

    // Ignores its signal: waits for its host call, records how the call
    // and the signal ended, and returns a result that must be dropped.
    async ignoring(args, ctx) {
      const record = { aborted: null, hostCall: null };
      seen[ctx.requestId] = record;
      const abortedEarly = ctx.signal.aborted;
      try {
        record.hostCall = { ok: await ctx.callHost('slow', {}) };
      } catch (err) {
        record.hostCall = { name: err.name, isCancelledError: err.constructor.name === 'CancelledError' };
      }
      record.aborted = { before: abortedEarly, after: ctx.signal.aborted, cancelled: ctx.cancelled };
      return 'late result';
    },

    report(args) {
      return seen[args.id] === undefined ? null : seen[args.id];
    },
  },
}).run();
