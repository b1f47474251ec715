'use strict';

// Outside review, round 6: the ES-module launcher (esm_main.mjs) with
// top-level await, an import that fails, an import cycle and a rejection
// after run(); and the pool's frame limit met exactly, one byte over, by a
// chunk and by a host call, in both codecs. Each test names the promise it
// checks. Bounds on waiting only turn hangs into failures; nothing is timed
// for speed.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { PassThrough } = require('node:stream');

const wire = require('../lib/wire');
const bridge = require('../lib');
const { BRIDGE_DIR, WorkerProcess } = require('./helpers');

const WAIT_MS = 30000; // generous: a loaded 2-core machine
const ESM_MAIN = path.join(BRIDGE_DIR, 'esm_main.mjs');

function haveMsgpack() {
  try {
    wire.getCodec('msgpack').encodeFrame({ a: 1 });
    return true;
  } catch (_) {
    return false;
  }
}
const CODECS = haveMsgpack() ? ['json', 'msgpack'] : ['json'];

// A temporary directory holding `files` ({name: source}), removed after `t`.
function moduleDir(t, files) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-node-round6-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const [name, source] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), source);
  return dir;
}

// The worker `script` run as the pool runs an ES module: through the
// bundled launcher, with the script's path as given.
function launch(t, script, options = {}) {
  const w = new WorkerProcess(ESM_MAIN, { ...options, args: [script, '--mode', 'pool-worker'] });
  t.after(() => w.kill());
  return w;
}

function bounded(promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: nothing within ${WAIT_MS} ms`)), WAIT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
}

// README: "the pool starts it through the bridge's esm_main.mjs"; the
// launcher says "The worker sees itself as the script Node ran". Node
// gives a script it runs as an absolute process.argv[1]; the pool passes
// the script as the user named it, often relative to the worker's
// directory. The launcher left that relative path in argv[1], so a worker
// finding its files from argv[1] found them elsewhere once it changed
// directory (and saw another path than under `node worker.mjs`).
test('an ES module worker run by the launcher sees its absolute path in process.argv[1]', async (t) => {
  const dir = moduleDir(t, {
    'worker.mjs':
      "import { Worker } from 'snakepit-bridge';\n" +
      'new Worker({ commands: { argv: () => process.argv.slice(1) } }).run();\n',
  });
  const script = path.join(dir, 'worker.mjs');
  const relative = path.relative(process.cwd(), script);
  assert.ok(!path.isAbsolute(relative));
  const w = launch(t, relative);
  await w.next((f) => f.type === 'hello', WAIT_MS);
  w.request(1, 'argv');
  const reply = await w.reply(1, WAIT_MS);
  assert.deepEqual(reply.result, [script, '--mode', 'pool-worker']);
  assert.deepEqual(await w.close(), { code: 0, signal: null });
});

// README: an ES module worker "needs no care ... the bridge loads before
// the worker's first import runs". With top-level await the worker's body
// pauses before it even imports the bridge: what it prints meanwhile still
// goes to stderr, and the first frame is the hello.
test('an ES module worker that prints and awaits at top level before importing the bridge', async (t) => {
  const dir = moduleDir(t, {
    'worker.mjs':
      "import { setTimeout as sleep } from 'node:timers/promises';\n" +
      "console.log('round6: before the await');\n" +
      'await sleep(100);\n' +
      "process.stdout.write('round6: after the await\\n');\n" +
      "const { Worker } = await import('snakepit-bridge');\n" +
      "new Worker({ commands: { hi: () => 'hi' } }).run();\n",
  });
  const w = launch(t, path.join(dir, 'worker.mjs'));
  const first = await w.next(() => true, WAIT_MS);
  assert.equal(first.type, 'hello');
  w.request(1, 'hi');
  assert.equal((await w.reply(1, WAIT_MS)).result, 'hi');
  assert.deepEqual(await w.close(), { code: 0, signal: null });
  assert.match(w.stderr, /round6: before the await/);
  assert.match(w.stderr, /round6: after the await/);
});

// A worker that cannot be loaded never says hello: it exits non-zero with
// Node's own error on stderr (which the pool puts in its start error), and
// writes nothing into the frame stream. Both a missing import and a syntax
// error, and a module whose body throws.
test('an ES module worker that fails to load exits 1, says why on stderr, and writes no frame', async (t) => {
  const dir = moduleDir(t, {
    'missing.mjs': "import './not_there.mjs';\nimport { Worker } from 'snakepit-bridge';\nnew Worker().run();\n",
    'syntax.mjs': "import { Worker } from 'snakepit-bridge';\nnew Worker().run(;\n",
    'throws.mjs': "import 'snakepit-bridge';\nthrow new Error('round6: thrown at load');\n",
  });
  const expected = {
    'missing.mjs': /Cannot find module .*not_there\.mjs/,
    'syntax.mjs': /SyntaxError/,
    'throws.mjs': /round6: thrown at load/,
  };
  for (const [name, pattern] of Object.entries(expected)) {
    const w = launch(t, path.join(dir, name));
    const bytes = [];
    w.child.stdout.on('data', (chunk) => bytes.push(chunk));
    w.child.stdin.end();
    assert.deepEqual(await bounded(w.exited, name), { code: 1, signal: null }, name);
    assert.equal(Buffer.concat(bytes).length, 0, `${name} wrote to stdout`);
    assert.match(w.stderr, pattern, name);
  }
});

// An import cycle through the worker itself (worker -> helper -> worker):
// ES modules allow it, and the worker serves as usual; the helper's
// load-time print goes to stderr.
test('an ES module worker in an import cycle serves as usual', async (t) => {
  const dir = moduleDir(t, {
    'worker.mjs':
      "import { helper } from './helper.mjs';\n" +
      "import { Worker } from 'snakepit-bridge';\n" +
      "export const NAME = 'worker';\n" +
      'new Worker({ commands: { hi: () => helper() } }).run();\n',
    'helper.mjs':
      "import { NAME } from './worker.mjs';\n" +
      "console.log('round6: helper loaded');\n" +
      'export function helper() { return `helper sees ${NAME}`; }\n',
  });
  const w = launch(t, path.join(dir, 'worker.mjs'));
  await w.next((f) => f.type === 'hello', WAIT_MS);
  w.request(1, 'hi');
  assert.equal((await w.reply(1, WAIT_MS)).result, 'helper sees worker');
  assert.deepEqual(await w.close(), { code: 0, signal: null });
  assert.match(w.stderr, /round6: helper loaded/);
});

// package.json's `exports` name two entry points, `snakepit-bridge` and
// `snakepit-bridge/package.json`, and a CommonJS worker under the pool
// finds both through NODE_PATH. The launcher's resolve hook (esm_hooks.mjs,
// which said the exports named nothing else) mapped only the first, so an
// ES module worker reading the bridge's version from its package.json
// failed to start.
test('an ES module worker imports snakepit-bridge/package.json as a CommonJS one requires it', async (t) => {
  const dir = moduleDir(t, {
    'worker.mjs':
      "import { Worker } from 'snakepit-bridge';\n" +
      "const pkg = (await import('snakepit-bridge/package.json', { with: { type: 'json' } })).default;\n" +
      'new Worker({ commands: { v: () => [pkg.name, pkg.version] } }).run();\n',
  });
  const own = JSON.parse(fs.readFileSync(path.join(BRIDGE_DIR, 'package.json'), 'utf8'));
  const w = launch(t, path.join(dir, 'worker.mjs'));
  await w.next((f) => f.type === 'hello', WAIT_MS);
  w.request(1, 'v');
  assert.deepEqual((await w.reply(1, WAIT_MS)).result, [own.name, own.version]);
  assert.deepEqual(await w.close(), { code: 0, signal: null });
});

// README, "Stdout and stdin belong to the protocol": an ES module worker
// "needs no care", and process.stdin "becomes an empty stream that ends as
// soon as it is read". A module the worker imports ahead of the bridge,
// reading stdin when it loads, sees that empty stream, and takes none of
// the frames.
test('an ES module whose first import reads process.stdin at load time sees it end, and takes no frame', async (t) => {
  const dir = moduleDir(t, {
    'reader.mjs':
      'let got = 0;\n' +
      "process.stdin.on('data', (b) => { got += b.length; });\n" +
      "process.stdin.on('end', () => console.error(`round6: user stdin ended after ${got} bytes`));\n",
    'worker.mjs':
      "import './reader.mjs';\nimport { Worker } from 'snakepit-bridge';\n" +
      "new Worker({ commands: { hi: () => 'hi' } }).run();\n",
  });
  const w = launch(t, path.join(dir, 'worker.mjs'));
  await w.next((f) => f.type === 'hello', WAIT_MS);
  for (let id = 1; id <= 3; id++) {
    w.request(id, 'hi');
    assert.equal((await w.reply(id, WAIT_MS)).result, 'hi');
  }
  assert.deepEqual(await w.close(), { code: 0, signal: null });
  assert.match(w.stderr, /round6: user stdin ended after 0 bytes/);
});

// README, Errors: an exception nobody catches ends the worker: "it writes
// the frames it already made, logs `uncaught exception; the worker exits`
// ... and exits with code 1". A top-level await that rejects after run()
// reaches Node as an uncaught exception of the launcher's.
test('an ES module worker whose top-level await rejects after run() exits 1 as the README says', async (t) => {
  const dir = moduleDir(t, {
    'worker.mjs':
      "import { Worker } from 'snakepit-bridge';\n" +
      "import { setTimeout as sleep } from 'node:timers/promises';\n" +
      "new Worker({ commands: { hi: () => 'hi' } }).run();\n" +
      'await sleep(300);\n' +
      "throw new Error('round6: rejected after run');\n",
  });
  const w = launch(t, path.join(dir, 'worker.mjs'));
  await w.next((f) => f.type === 'hello', WAIT_MS);
  assert.deepEqual(await bounded(w.exited, 'exit'), { code: 1, signal: null });
  assert.equal(w.stdoutError, null);
  assert.match(w.stderr, /uncaught exception; the worker exits: .*round6: rejected after run/);
});

// Serves `requests` in-process with the limit `limit`; returns every frame
// written, decoded, and the payload size of each.
async function serveLimited(codec, limit, commands, requests) {
  const worker = new bridge.Worker({ codec, maxFrameSize: limit, commands });
  const c = wire.getCodec(codec);
  const input = new PassThrough();
  const frames = [];
  const sizes = [];
  const hostCalls = [];
  const done = worker.serve({
    input,
    write: (frame) => {
      new wire.FrameReader({ onFrame: (p) => sizes.push(p.length), onError: () => {} }).push(frame);
      for (const f of wire.decodeFrames(frame, { codec: c })) {
        frames.push(f);
        if (f.type === 'host_call') {
          hostCalls.push(f);
          // The pool answers it.
          setImmediate(() => input.write(c.encodeFrame({ type: 'host_reply', id: f.id, success: true, result: 'ok' })));
        }
      }
    },
  });
  for (const r of requests) input.write(c.encodeFrame(r));
  // Every request answered, then the end of input.
  const ids = requests.map((r) => r.id);
  const deadline = Date.now() + WAIT_MS;
  while (!ids.every((id) => frames.some((f) => f.type === undefined && f.id === id))) {
    assert.ok(Date.now() < deadline, `not all answered: ${JSON.stringify(frames)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  input.end();
  await done;
  return { frames, sizes, hostCalls };
}

// The length of `value`'s payload in `codec`.
function payloadSize(codec, value) {
  return wire.getCodec(codec).encodeFrame(value).length - wire.HEADER_SIZE;
}

// The length of a string filling `make(n)` to exactly `limit` bytes.
function fill(codec, limit, make) {
  let n = 0;
  while (payloadSize(codec, make(n)) < limit) n++;
  assert.equal(payloadSize(codec, make(n)), limit, 'no string length fills the limit exactly');
  return n;
}

for (const codec of CODECS) {
  // README: "A chunk larger than the pool's frame limit is not written: the
  // call ends there with a failed reply of type ResultTooLarge". A chunk of
  // exactly the limit is written; one byte more is not.
  test(`a chunk of exactly the limit is sent, one byte more ends the call (${codec})`, async () => {
    const LIMIT = 1000;
    const n = fill(codec, LIMIT, (k) => ({ type: 'chunk', id: 1, data: 'c'.repeat(k) }));
    const gave = [];
    const { frames, sizes } = await serveLimited(codec, LIMIT, {
      chunk(args, ctx) {
        gave.push(ctx.sendChunk('c'.repeat(args.n)));
        gave.push(ctx.sendChunk('after'));
        return 'end';
      },
    }, [
      { id: 1, command: 'chunk', args: { n }, stream: true },
      { id: 2, command: 'chunk', args: { n: n + 1 }, stream: true },
    ]);
    assert.deepEqual(gave, [true, true, false, false]);
    const one = frames.filter((f) => f.id === 1);
    assert.deepEqual(one.map((f) => f.type || 'reply'), ['chunk', 'chunk', 'reply']);
    assert.equal(one[0].data.length, n);
    assert.equal(one[2].result, 'end');
    const two = frames.filter((f) => f.id === 2);
    assert.equal(two.length, 1, JSON.stringify(two));
    assert.equal(two[0].error.type, 'ResultTooLarge');
    assert.equal(two[0].error.message, `the chunk would be ${LIMIT + 1} bytes, above the pool's limit of ${LIMIT}`);
    assert.ok(sizes.every((s) => s <= LIMIT), String(sizes));
    assert.ok(sizes.includes(LIMIT));
  });

  // README: "a callHost whose request would be that large rejects with a
  // HostCallError of type ResultTooLarge without sending anything". One of
  // exactly the limit is sent and answered.
  test(`a host call of exactly the limit is sent, one byte more rejects unsent (${codec})`, async () => {
    const LIMIT = 1000;
    const n = fill(codec, LIMIT, (k) => ({
      type: 'host_call', id: 1, request_id: 1, function: 'f', args: { k: 'h'.repeat(k) },
    }));
    const { frames, sizes, hostCalls } = await serveLimited(codec, LIMIT, {
      async host(args, ctx) {
        try {
          return await ctx.callHost('f', { k: 'h'.repeat(args.n) });
        } catch (err) {
          return { name: err.name, type: err.type, isHostCallError: err instanceof bridge.HostCallError, message: err.message };
        }
      },
    }, [
      { id: 1, command: 'host', args: { n } },
      { id: 2, command: 'host', args: { n: n + 1 } },
    ]);
    assert.equal(hostCalls.length, 1, JSON.stringify(hostCalls.map((h) => h.request_id)));
    assert.equal(hostCalls[0].request_id, 1);
    assert.equal(frames.find((f) => f.type === undefined && f.id === 1).result, 'ok');
    const two = frames.find((f) => f.type === undefined && f.id === 2).result;
    assert.equal(two.type, 'ResultTooLarge');
    assert.equal(two.isHostCallError, true);
    assert.equal(two.message, `the host call f would be ${LIMIT + 1} bytes, above the pool's limit of ${LIMIT}`);
    assert.ok(sizes.every((s) => s <= LIMIT), String(sizes));
    assert.ok(sizes.includes(LIMIT));
  });
}

// The comment of run() (and round 5's test of it): an exit other than
// SIGTERM or the pool's going away, such as process.exit() in a handler,
// writes the frames already made first. Frames made in the current turn
// of the event loop wait in a batch that is written when the turn's
// microtasks run, and the exit did not write that batch: a reply made
// just before another handler of the same read called process.exit(), or
// a chunk sent just before the handler's own process.exit(), was lost.
test('process.exit() in a handler still writes the reply and chunk made in the same turn', async (t) => {
  const dir = moduleDir(t, {
    'worker.js':
      "const { Worker } = require('snakepit-bridge');\n" +
      'new Worker({ commands: {\n' +
      "  hi: () => 'hi',\n" +
      '  exit: (args) => process.exit(args.code),\n' +
      "  chunkThenExit: (args, ctx) => { ctx.sendChunk('last words'); process.exit(4); },\n" +
      '} }).run();\n',
  });
  const script = path.join(dir, 'worker.js');
  for (const codec of CODECS) {
    const w = new WorkerProcess(script, { codec });
    t.after(() => w.kill());
    await w.next((f) => f.type === 'hello', WAIT_MS);
    const c = wire.getCodec(codec);
    // One write: the reply to 1 is made, then 2 exits, in one turn.
    w.sendRaw(Buffer.concat([
      c.encodeFrame({ id: 1, command: 'hi', args: {} }),
      c.encodeFrame({ id: 2, command: 'exit', args: { code: 3 } }),
    ]));
    assert.deepEqual(await bounded(w.exited, 'exit'), { code: 3, signal: null });
    assert.equal(w.stdoutError, null);
    assert.equal((await w.reply(1, WAIT_MS)).result, 'hi', codec);

    const v = new WorkerProcess(script, { codec });
    t.after(() => v.kill());
    await v.next((f) => f.type === 'hello', WAIT_MS);
    v.request(1, 'chunkThenExit', {}, { stream: true });
    assert.deepEqual(await bounded(v.exited, 'exit'), { code: 4, signal: null });
    assert.equal(v.stdoutError, null);
    assert.equal((await v.next((f) => f.type === 'chunk', WAIT_MS)).data, 'last words', codec);
  }
});

for (const codec of CODECS) {
  // README, maxFrameSize: "larger incoming frames are skipped with a
  // ProtocolError reply". At a limit of the pool's choosing (not only the
  // 64 MiB default): a request of exactly the limit is served, one a byte
  // longer is skipped whole and answered under id 0, and the request after
  // it is read in step.
  test(`an incoming frame of exactly maxFrameSize is served, one byte more is skipped in step (${codec})`, async () => {
    const LIMIT = 1000;
    const c = wire.getCodec(codec);
    const n = fill(codec, LIMIT, (k) => ({ id: 1, command: 'len', args: { s: 'r'.repeat(k) } }));
    const worker = new bridge.Worker({ codec, maxFrameSize: LIMIT, commands: { len: (args) => args.s.length } });
    const input = new PassThrough();
    const replies = [];
    const done = worker.serve({ input, write: (frame) => replies.push(...wire.decodeFrames(frame, { codec: c })) });
    input.write(Buffer.concat([
      c.encodeFrame({ id: 1, command: 'len', args: { s: 'r'.repeat(n) } }),
      c.encodeFrame({ id: 2, command: 'len', args: { s: 'r'.repeat(n + 1) } }),
      c.encodeFrame({ id: 3, command: 'len', args: { s: 'r' } }),
    ]));
    input.end();
    await bounded(done, 'serve');
    const answers = replies.filter((f) => f.type === undefined);
    assert.deepEqual(answers.map((f) => [f.id, f.success]), [[1, true], [0, false], [3, true]]);
    assert.equal(answers[0].result, n);
    assert.equal(answers[1].error.type, 'ProtocolError');
    assert.equal(answers[1].error.message, `frame of ${LIMIT + 1} bytes exceeds the maximum of ${LIMIT} bytes`);
    assert.equal(answers[2].result, 1);
  });
}
