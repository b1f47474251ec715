// Handlers that return what the codec cannot carry, throw what is not an
// Error, or break out of the frame stream, for outside_handler_results.rs.
const fs = require('fs');
const { Worker } = require('snakepit-bridge');

class Plain {
  constructor() {
    this.a = 1;
  }

  method() {
    return 2;
  }
}

function nested(depth) {
  let value = 'leaf';
  for (let i = 1; i < depth; i++) value = [value];
  return value;
}

const worker = new Worker({
  commands: {
    pid: () => ({ pid: process.pid }),
    slow: async (args) => {
      await new Promise((r) => setTimeout(r, args.ms));
      return { pid: process.pid };
    },
    // Values that are not Errors.
    throw42: () => {
      throw 42;
    },
    throwNull: () => {
      throw null;
    },
    throwUndefined: () => {
      throw undefined;
    },
    throwString: () => {
      throw 'plain text thrown';
    },
    throwObject: () => {
      throw { code: 7 };
    },
    throwRevokedProxy: () => {
      const { proxy, revoke } = Proxy.revocable(new Error('hidden'), {});
      revoke();
      throw proxy;
    },
    rejectUndefined: () => Promise.reject(),
    rejectNumber: async () => {
      throw 43;
    },
    // Results the codec cannot carry, or carries oddly.
    bigint: () => ({ v: 10n }),
    cycle: () => {
      const o = { name: 'loop' };
      o.self = o;
      return o;
    },
    surrogate: () => ({ v: 'caf\ud800' }),
    fn: () => ({ v: () => 1, w: 1 }),
    getterThrows: () => ({
      get v() {
        throw new Error('a getter that throws');
      },
    }),
    symbol: () => ({ v: Symbol('no'), w: 1 }),
    generator: () =>
      (function* gen() {
        yield 1;
      })(),
    instance: () => ({ v: new Plain() }),
    inf: () => ({ v: Infinity, w: -Infinity, x: NaN }),
    deep: (args) => nested(args.depth),
    huge: (args) => 'x'.repeat(args.n),
    // A promise of a promise, and a thenable that resolves to a promise.
    promiseOfPromise: () => Promise.resolve(Promise.resolve({ v: 'inner' })),
    thenableOfPromise: () => ({
      then(resolve) {
        resolve(new Promise((r) => setTimeout(() => r({ v: 'thenable' }), 10)));
      },
    }),
    // Raw bytes on descriptor 1, which stays the pipe to the pool in Node.
    rawFd1: () => {
      fs.writeSync(1, Buffer.from('not a frame\n'));
      return { pid: process.pid };
    },
    print: (args) => {
      console.log(args.text);
      return { pid: process.pid };
    },
    endStdout: () => {
      process.stdout.end();
      return { pid: process.pid };
    },
    destroyStdout: () => {
      process.stdout.destroy();
      return { pid: process.pid };
    },
    badChunk: (args, ctx) => {
      let caught = null;
      try {
        ctx.sendChunk({ v: 10n });
      } catch (err) {
        caught = err.name;
      }
      ctx.sendChunk('fine');
      return { caught };
    },
    badChunkUncaught: (args, ctx) => {
      ctx.sendChunk({ v: 10n });
      return { sent: true };
    },
    pauseStdin: () => {
      process.stdin.pause();
      return { pid: process.pid };
    },
    readlineClosed: () => {
      // A library prompting on stdin: readline over process.stdin, closed.
      const rl = require('readline').createInterface({ input: process.stdin });
      rl.close();
      return { pid: process.pid };
    },
    exit3: () => {
      process.exit(3);
    },
  },
});

worker.run();
