// For outside_node_readme.rs, run directly with node (not under a pool): the
// README's `maxConcurrency` rules, what `hello` declares for the options, and
// `worker.serve({ input, write })` leaving the process alone. Prints one JSON
// document on stdout.
'use strict';

const { PassThrough } = require('stream');
const { Worker } = require('snakepit-bridge');

const out = {};

// maxConcurrency: the value given, and what the worker took (or the error).
const candidates = {
  omitted: undefined,
  null: null,
  one: 1,
  seven: 7,
  '2**32-1': 2 ** 32 - 1,
  '2**40': 2 ** 40,
  zero: 0,
  negative: -3,
  half: 1.5,
  string4: '4',
  NaN: NaN,
  true: true,
};
out.maxConcurrency = {};
for (const [name, value] of Object.entries(candidates)) {
  const opts = name === 'omitted' ? {} : { maxConcurrency: value };
  try {
    const w = new Worker(opts);
    out.maxConcurrency[name] = { value: w.maxConcurrency, hello: w.hello().capabilities.max_concurrency };
  } catch (e) {
    out.maxConcurrency[name] = { error: e.constructor.name };
  }
}

// hello with options.
const named = new Worker({ name: 'my-bridge', sigint: true, maxConcurrency: 3 });
out.hello = named.hello();
out.helloDefault = new Worker().hello();

// serve(): frames in from a stream, frames out through write(buffer).
function frame(msg) {
  const body = Buffer.from(JSON.stringify(msg));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}
function frames(buffer) {
  const list = [];
  let off = 0;
  while (off + 4 <= buffer.length) {
    const n = buffer.readUInt32BE(off);
    list.push(JSON.parse(buffer.subarray(off + 4, off + 4 + n).toString()));
    off += 4 + n;
  }
  return list;
}

function sameDescriptor(a, b) {
  return a !== undefined && b !== undefined && a.get === b.get && a.value === b.value;
}

const stdoutBefore = process.stdout;
const stdinDescriptor = Object.getOwnPropertyDescriptor(process, 'stdin');
const sigterm = process.listenerCount('SIGTERM');
const written = [];
const w = new Worker({
  codec: 'json',
  commands: {
    greet: (args) => `hello ${args.name}`,
    async slow(args) {
      await new Promise((r) => setTimeout(r, args.ms));
      return 'slow done';
    },
  },
});
const input = new PassThrough();
const served = w.serve({ input, write: (buf) => written.push(Buffer.from(buf)) });
input.write(Buffer.concat([frame({ id: 1, command: 'slow', args: { ms: 200 } }), frame({ id: 2, command: 'greet', args: { name: 'Ada' } })]));
input.end();
served.then(() => {
  out.serve = {
    frames: frames(Buffer.concat(written)),
    stdout_same: process.stdout === stdoutBefore,
    stdin_descriptor_same: sameDescriptor(Object.getOwnPropertyDescriptor(process, 'stdin'), stdinDescriptor),
    sigterm_listeners_added: process.listenerCount('SIGTERM') - sigterm,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
});
