// Node worker for redteam_bridges.rs: promises of bridges/node/README.md
// checked through a real pool.
'use strict';

const { Worker } = require('snakepit-bridge');
const { setTimeout: sleep } = require('timers/promises');

const state = { running: 0, most: 0, stubbornEnded: 0, countAborted: 0, countSteps: 0 };

const worker = new Worker({
  maxConcurrency: Number(process.env.RT_MAX_CONCURRENCY || 16),
  commands: {
    pid() {
      return { pid: process.pid };
    },
    echo(args) {
      return args;
    },
    state() {
      return { ...state, pid: process.pid };
    },
    // Ignores its signal: the README says the reply is Cancelled at once
    // anyway and what the handler returns later is dropped.
    async stubborn(args) {
      await sleep(args.ms || 4000);
      state.stubbornEnded += 1;
      return { late: true };
    },
    // Counts how many calls run at once.
    async counted(args) {
      state.running += 1;
      state.most = Math.max(state.most, state.running);
      try {
        await sleep(args.ms || 300);
      } finally {
        state.running -= 1;
      }
      return { pid: process.pid };
    },
    // The README's `count`, which stops early when the caller gives up.
    async count(args, ctx) {
      const to = args.to || 3;
      try {
        for (let i = 1; i <= to; i++) {
          ctx.sendChunk({ i });
          state.countSteps = i;
          await sleep(args.ms || 10, undefined, { signal: ctx.signal });
        }
      } catch (err) {
        if (ctx.signal.aborted) state.countAborted += 1;
        throw err;
      }
      return { counted: to };
    },
    // An exception nobody catches, thrown in a timer after the reply.
    boom(args) {
      setTimeout(() => {
        throw new Error('thrown in a timer on purpose');
      }, args.ms || 100);
      return { armed: true };
    },
    async slow(args, ctx) {
      await sleep(args.ms || 5000, undefined, { signal: ctx.signal });
      return { slow: true };
    },
    // What a binary argument arrived as, and the same bytes back.
    bin_in(args) {
      const b = args.b;
      // A Buffer is a Uint8Array too.
      return { class: b instanceof Uint8Array ? 'Uint8Array' : typeof b, size: b && b.length, back: b };
    },
    // Asks the host function "slow" and returns its answer.
    async ask(args, ctx) {
      return { answer: await ctx.callHost('slow', args), pid: process.pid };
    },
    async session_ops(args, ctx) {
      const before = await ctx.session.get('k');
      await ctx.session.set('k', args.value);
      const after = await ctx.session.get('k');
      const deleted = await ctx.session.delete('k');
      const deletedAgain = await ctx.session.delete('k');
      return { before, after, deleted, deleted_again: deletedAgain };
    },
    // README, Codecs: "Return plain data."
    date() {
      return { when: new Date(0) };
    },
    collections() {
      return { map: new Map([['a', 1]]), set: new Set([1, 2]) };
    },
  },
});

worker.run();
