// The Node.js side of the cross-language session test.
const { Worker } = require('snakepit-bridge');

new Worker({
  commands: {
    async remember(args, ctx) {
      await ctx.session.set(args.key, args.value);
      return { pid: process.pid, session_id: ctx.sessionId };
    },
    async recall(args, ctx) {
      return { pid: process.pid, value: await ctx.session.get(args.key) };
    },
    async forget(args, ctx) {
      return { pid: process.pid, deleted: await ctx.session.delete(args.key) };
    },
  },
}).run();
