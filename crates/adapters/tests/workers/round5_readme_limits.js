// Handlers whose results, errors, chunks and host calls are sized by the
// caller, for outside_readme_round5.rs (README: max_frame_size and the
// ResultTooLarge entry of Troubleshooting).
const { Worker } = require('snakepit-bridge');

new Worker({
  commands: {
    pid: () => ({ pid: process.pid, limit: process.env.SNAKEPIT_MAX_FRAME_SIZE || null }),
    sized: (args) => (args.text ?? 'x').repeat(args.n),
    length: (args) => ({ len: args.s.length }),
    fail_long: (args) => {
      throw new Error((args.text ?? 'y').repeat(args.n));
    },
    chunks: (args, ctx) => {
      let sent = 0;
      for (let i = 0; i < args.count; i++) {
        if (ctx.sendChunk('c'.repeat(args.size)) !== false) sent += 1;
      }
      return { sent };
    },
    big_chunk: (args, ctx) => {
      ctx.sendChunk('small');
      const ok = ctx.sendChunk((args.text ?? 'c').repeat(args.n));
      return { caught: ok === false ? 'returned false' : null };
    },
    set_big: async (args, ctx) => {
      try {
        await ctx.session.set('k', (args.text ?? 'z').repeat(args.n));
      } catch (e) {
        return { error: e.type || String(e) };
      }
      return { error: null };
    },
    host_big: async (args, ctx) => {
      try {
        const got = await ctx.callHost('big', { n: args.n });
        return { len: got.length };
      } catch (e) {
        return { error: e.type || String(e) };
      }
    },
  },
}).run();
