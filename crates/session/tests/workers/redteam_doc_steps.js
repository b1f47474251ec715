// Runs the steps a test gives, through ctx.session and ctx.callHost, and
// answers what each gave: {ok: value} or {caught: <HostCallError type>}.
// `set_nested` stores an array nested `depth` levels deep; `get_depth`
// answers how deep the value read is. A `wait` step creates the file `started` and waits for the file `go`.
const fs = require('fs');
const { Worker } = require('snakepit-bridge');

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function run(step, ctx) {
  switch (step.op) {
    case 'get': return ctx.session.get(step.key);
    case 'set': return ctx.session.set(step.key, step.value);
    case 'delete': return ctx.session.delete(step.key);
    case 'set_nested': {
      let v = 0;
      for (let i = 0; i < step.depth; i++) v = [v];
      return ctx.session.set(step.key, v);
    }
    case 'get_depth': {
      let v = await ctx.session.get(step.key);
      let depth = 0;
      while (Array.isArray(v)) { v = v[0]; depth += 1; }
      return depth;
    }
    case 'program': return ctx.callHost('session.get_program', { program_id: step.id });
    case 'global': return ctx.callHost('session.get_global_program', { program_id: step.id });
    case 'store_program':
      return ctx.callHost('session.store_program', { program_id: step.id, program: step.value });
    case 'wait': {
      fs.writeFileSync(step.started, '');
      const until = Date.now() + 60000;
      while (!fs.existsSync(step.go)) {
        if (Date.now() > until) throw new Error('the test never said go');
        await sleep(10);
      }
      return null;
    }
    default: throw new Error(`unknown step ${step.op}`);
  }
}

new Worker({
  commands: {
    async steps(args, ctx) {
      const out = [];
      for (const step of args.steps) {
        try {
          const v = await run(step, ctx);
          out.push({ ok: v === undefined ? null : v });
        } catch (e) {
          if (e && e.type) out.push({ caught: e.type });
          else throw e;
        }
      }
      return out;
    },
  },
}).run();
