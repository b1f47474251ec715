// my_worker.js
const { Worker } = require('snakepit-bridge');
const { setTimeout: sleep } = require('timers/promises');

const worker = new Worker({
  commands: {
    // A handler gets the request's args and a context; it returns the result
    // (or a promise of it). Plain functions and async functions both work.
    greet(args) {
      return { greeting: `Hello, ${args.name || 'world'}!` };
    },

    // Streams partial results to callers that asked for a stream, and stops
    // early when the caller gives up.
    async count(args, ctx) {
      const to = args.to || 3;
      for (let i = 1; i <= to; i++) {
        ctx.sendChunk({ i });
        await sleep(10, undefined, { signal: ctx.signal });
      }
      return { counted: to };
    },

    // State kept by the pool for the caller's session.
    async visits(args, ctx) {
      const seen = (await ctx.session.get('visits')) || 0;
      await ctx.session.set('visits', seen + 1);
      return { visits: seen + 1 };
    },

    // A thrown error becomes a failed reply {type, message, traceback}.
    fail(args) {
      throw new RangeError(`no such item: ${args.item}`);
    },
  },
});

worker.command('shout', (args) => String(args.text).toUpperCase());

worker.run();
