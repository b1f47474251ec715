'use strict';

// A worker for outside_bridges_doc_round6.rs: the rows of docs/bridges.md's
// context table, host-call failures and the session store, in Node.js.

const { Worker, HostCallError } = require('snakepit-bridge');

function failure(err) {
  return {
    class: err instanceof HostCallError ? 'HostCallError' : err.constructor.name,
    type: err.type,
    message: err.message,
  };
}

// What `stall` saw when its call was given up, for `saw` to report.
const SEEN = [];
// How many `meet` calls have started.
let met = 0;

const worker = new Worker({
  commands: {
    saw() {
      return SEEN;
    },
    async stall(args, ctx) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 60000);
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      SEEN.push(ctx.signal.aborted && ctx.cancelled ? 'aborted' : 'slept');
    },
    async meet() {
      // Waits (at most 10 s) until a second `meet` has started.
      met += 1;
      const deadline = Date.now() + 10000;
      while (met < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      return met >= 2;
    },
    async fields(args, ctx) {
      const seen = await ctx.callHost('whoami', {});
      return {
        pid: process.pid,
        request_id: ctx.requestId,
        command: ctx.command,
        session_id: ctx.sessionId,
        worker_id: ctx.workerId,
        timeout_ms: ctx.timeoutMs,
        stream: ctx.streamRequested,
        chunk_sent: ctx.sendChunk('a chunk'),
        host_saw: seen,
      };
    },
    async bytes_to_host(args, ctx) {
      const out = { pid: process.pid };
      try {
        await ctx.session.set('k', Buffer.from([0, 1, 98, 105, 110]));
        out.set = 'stored';
      } catch (err) {
        out.set = failure(err);
      }
      out.get = await ctx.session.get('k');
      return out;
    },
    async host_failures(args, ctx) {
      const out = { pid: process.pid };
      for (const name of ['fails', 'nowhere']) {
        try {
          out[name] = await ctx.callHost(name, { id: 'x' });
        } catch (err) {
          out[name] = failure(err);
        }
      }
      return out;
    },
    async delete(args, ctx) {
      await ctx.session.set('d', 1);
      return [await ctx.session.delete('d'), await ctx.session.delete('d'), await ctx.session.get('d')];
    },
  },
});

worker.run();
