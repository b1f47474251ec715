// Handlers for outside_readme_round6.rs (README.md and ARCHITECTURE.md as
// promises): many host calls at once, and fast streams.
const { Worker } = require('snakepit-bridge');

new Worker({
  commands: {
    pid: () => ({ pid: process.pid }),
    many_host: async (args, ctx) => {
      const calls = [];
      for (let i = 0; i < args.n; i++) calls.push(ctx.callHost('echo', { i }));
      const got = await Promise.all(calls);
      return { sum: got.reduce((a, g) => a + g.i, 0) };
    },
    many_gets: async (args, ctx) => {
      const calls = [];
      for (let i = 0; i < args.n; i++) calls.push(ctx.session.get(`k${i}`));
      const got = await Promise.all(calls);
      return { nulls: got.filter((g) => g === null).length };
    },
    chunks: (args, ctx) => {
      let sent = 0;
      for (let i = 0; i < args.count; i++) {
        if (ctx.sendChunk({ n: i }) !== false) sent += 1;
      }
      return { sent };
    },
  },
}).run();
