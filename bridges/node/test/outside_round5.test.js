'use strict';

// Outside review, round 5: the pool's frame limit (SNAKEPIT_MAX_FRAME_SIZE,
// docs/protocol.md sections 1 and 5: ResultTooLarge), the maxFrameSize
// option that follows it, and an ES module worker whose first import
// prints. Each test names the promise it checks. Bounds on waiting only
// turn hangs into failures; nothing is timed for speed.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { PassThrough } = require('node:stream');

const wire = require('../lib/wire');
const bridge = require('../lib');
const { BRIDGE_DIR, WorkerProcess, bridgeNodePath } = require('./helpers');

const WAIT_MS = 30000; // generous: a loaded 2-core machine
const LIMIT = 2000;
const ROUND5_WORKER = path.join(__dirname, 'round5_worker.js');
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

function nodePath() {
  return [bridgeNodePath(), process.env.NODE_PATH].filter(Boolean).join(path.delimiter);
}

// A worker told the pool's limit is LIMIT. Every frame it writes is also
// read as the pool reads it, with that limit: `w.oversized` lists the
// frames the pool would have refused.
async function spawnLimited(t, codec, env = {}) {
  const w = new WorkerProcess(ROUND5_WORKER, {
    codec,
    env: { NODE_PATH: nodePath(), SNAKEPIT_MAX_FRAME_SIZE: String(LIMIT), ...env },
  });
  t.after(() => w.kill());
  w.oversized = [];
  const strict = new wire.FrameReader({
    maxFrameSize: LIMIT,
    onFrame: () => {},
    onError: (err) => w.oversized.push(err.message),
  });
  w.child.stdout.on('data', (chunk) => strict.push(chunk));
  await w.next((f) => f.type === 'hello', WAIT_MS);
  return w;
}

// A request and its reply, waited for generously.
function call(w, id, command, args = {}, extra = {}) {
  w.request(id, command, args, extra);
  return w.reply(id, WAIT_MS);
}

// The length of `value`'s payload in `codec`.
function payloadSize(codec, value) {
  return wire.getCodec(codec).encodeFrame(value).length - wire.HEADER_SIZE;
}

const TOO_LARGE = /^the result would be (\d+) bytes, above the pool's limit of (\d+)$/;

function withEnv(value, fn) {
  const before = process.env.SNAKEPIT_MAX_FRAME_SIZE;
  if (value === undefined) delete process.env.SNAKEPIT_MAX_FRAME_SIZE;
  else process.env.SNAKEPIT_MAX_FRAME_SIZE = value;
  try {
    return fn();
  } finally {
    if (before === undefined) delete process.env.SNAKEPIT_MAX_FRAME_SIZE;
    else process.env.SNAKEPIT_MAX_FRAME_SIZE = before;
  }
}

// protocol.md section 1: SNAKEPIT_MAX_FRAME_SIZE, decimal bytes, absent
// means 67108864. A value the bridge cannot use falls back to that default
// rather than stop the worker; the option, when given, wins.
test('maxFrameSize defaults from SNAKEPIT_MAX_FRAME_SIZE; a bad value gives 64 MiB', () => {
  const DEFAULT = 67108864;
  assert.equal(wire.DEFAULT_MAX_FRAME_SIZE, DEFAULT);
  assert.equal(withEnv(undefined, () => new bridge.Worker().maxFrameSize), DEFAULT);
  assert.equal(withEnv('123456', () => new bridge.Worker().maxFrameSize), 123456);
  assert.equal(withEnv('1', () => new bridge.Worker().maxFrameSize), 1);
  for (const bad of ['', '0', '-5', 'abc', '1e6', ' 100', '100 ', '12.5', '0x10', '+7', '١٢٣', '100\n']) {
    assert.equal(withEnv(bad, () => new bridge.Worker().maxFrameSize), DEFAULT, JSON.stringify(bad));
  }
  // Past what a 4-byte length can announce, the limit is that length.
  assert.equal(withEnv('99999999999999999999', () => new bridge.Worker().maxFrameSize), 0xffffffff);
  assert.equal(withEnv('123456', () => new bridge.Worker({ maxFrameSize: 99 }).maxFrameSize), 99);
  assert.equal(withEnv('123456', () => new bridge.Worker({ maxFrameSize: null }).maxFrameSize), 123456);
});

// Round-4 leftover: Infinity set no limit at all while the pool keeps one.
test('maxFrameSize: Infinity and other non-integers are a RangeError naming the option', () => {
  for (const bad of [Infinity, -Infinity, 1.5, 1e6 + 0.25, NaN, '64', 10n]) {
    assert.throws(() => new bridge.Worker({ maxFrameSize: bad }), (err) => {
      assert.ok(err instanceof RangeError, String(bad));
      assert.match(err.message, /^maxFrameSize must be a whole number of bytes/);
      return true;
    });
  }
  assert.equal(new bridge.Worker({ maxFrameSize: 2 ** 40 }).maxFrameSize, 0xffffffff);
});

for (const codec of CODECS) {
  // protocol.md section 5, ResultTooLarge: "the bundled bridges send this
  // failed reply instead, and the worker stays". A result of exactly the
  // limit goes out as it is.
  test(`a result above SNAKEPIT_MAX_FRAME_SIZE is a ResultTooLarge reply; the worker serves on (${codec})`,
    async (t) => {
      const w = await spawnLimited(t, codec);
      assert.equal((await call(w, 1, 'limit')).result, LIMIT);
      let fits = LIMIT - 60;
      while (payloadSize(codec, { id: 2, success: true, result: 'x'.repeat(fits) }) < LIMIT) fits++;
      assert.equal(payloadSize(codec, { id: 2, success: true, result: 'x'.repeat(fits) }), LIMIT);
      const exact = await call(w, 2, 'big', { n: fits }, {});
      assert.equal(exact.success, true);
      assert.equal(exact.result.length, fits);

      const over = await call(w, 3, 'big', { n: fits + 1 });
      assert.equal(over.success, false);
      assert.equal(over.error.type, 'ResultTooLarge');
      const [, size, limit] = TOO_LARGE.exec(over.error.message) || [];
      assert.equal(Number(size), LIMIT + 1, over.error.message);
      assert.equal(Number(limit), LIMIT);

      const huge = await call(w, 4, 'big', { n: 5 * 1024 * 1024 });
      assert.equal(huge.error.type, 'ResultTooLarge');
      assert.equal((await call(w, 5, 'ping')).success, true);
      assert.deepEqual(w.oversized, []);
      assert.deepEqual(await w.close(), { code: 0, signal: null });
    });

  // The same for a failed reply: a thrown error's message is the user's.
  test(`a failed reply above the limit is a ResultTooLarge reply instead (${codec})`, async (t) => {
    const w = await spawnLimited(t, codec);
    const reply = await call(w, 1, 'fail', { n: 3 * LIMIT });
    assert.equal(reply.error.type, 'ResultTooLarge');
    assert.match(reply.error.message, TOO_LARGE);
    const small = await call(w, 2, 'fail', { n: 10 });
    assert.equal(small.error.type, 'RangeError');
    assert.deepEqual(w.oversized, []);
    await w.close();
  });

  // "A chunk that large ends its stream with this error": one final reply,
  // nothing after it, and sendChunk says it sent nothing.
  test(`a chunk above the limit ends the stream with ResultTooLarge, and nothing follows (${codec})`,
    async (t) => {
      const w = await spawnLimited(t, codec);
      w.request(1, 'chunks', { n: 3 * LIMIT }, { stream: true });
      const first = await w.next((f) => f.type === 'chunk' && f.id === 1, WAIT_MS);
      assert.equal(first.data, 'small');
      const reply = await w.reply(1, WAIT_MS);
      assert.equal(reply.success, false);
      assert.equal(reply.error.type, 'ResultTooLarge');
      assert.match(reply.error.message, /^the chunk would be \d+ bytes, above the pool's limit of 2000$/);
      // The worker serves on; by the time it answers, anything more for
      // request 1 would have been written before this reply.
      assert.equal((await call(w, 2, 'ping')).success, true);
      assert.deepEqual(w.frames.filter((f) => f.id === 1), []);
      assert.match(w.stderr, /round5: sendChunk gave true false false/);
      assert.deepEqual(w.oversized, []);
      await w.close();
    });

  // "a host call whose arguments are that large fails inside the handler
  // without being sent".
  test(`a host call above the limit rejects in the handler and sends nothing (${codec})`, async (t) => {
    const w = await spawnLimited(t, codec);
    const caught = await call(w, 1, 'host', { n: 3 * LIMIT });
    assert.equal(caught.success, true);
    assert.equal(caught.result.name, 'ResultTooLarge');
    assert.equal(caught.result.type, 'ResultTooLarge');
    assert.equal(caught.result.hostCallError, true);
    assert.match(caught.result.message, /^the host call session\.get would be \d+ bytes, above the pool's limit of 2000$/);
    const uncaught = await call(w, 2, 'hostUncaught', { n: 3 * LIMIT });
    assert.equal(uncaught.error.type, 'ResultTooLarge');
    assert.deepEqual(w.frames.filter((f) => f.type === 'host_call'), []);
    // A small one is still sent.
    w.request(3, 'host', { n: 3 });
    const hostCall = await w.next((f) => f.type === 'host_call', WAIT_MS);
    assert.equal(hostCall.args.key, 'kkk');
    w.send({ type: 'host_reply', id: hostCall.id, success: true, result: 'v' });
    assert.equal((await w.reply(3, WAIT_MS)).result, 'sent');
    assert.deepEqual(w.oversized, []);
    await w.close();
  });

  // A value the bridge cannot use is no reason to stop: the default holds.
  test(`a worker told a bad SNAKEPIT_MAX_FRAME_SIZE starts with 64 MiB (${codec})`, async (t) => {
    for (const bad of ['lots', '-1', '']) {
      const w = await spawnLimited(t, codec, { SNAKEPIT_MAX_FRAME_SIZE: bad });
      assert.equal((await call(w, 1, 'limit')).result, wire.DEFAULT_MAX_FRAME_SIZE, bad);
      assert.equal((await call(w, 2, 'big', { n: 3 * LIMIT })).success, true);
      await w.close();
    }
  });

  // In-process: the limit counts both ways. The unknown command's reply
  // quotes the command, so it is larger than the request that fitted.
  test(`serve(): an UnknownCommand reply larger than the limit is ResultTooLarge (${codec})`, async () => {
    const worker = new bridge.Worker({ codec, maxFrameSize: LIMIT });
    const c = wire.getCodec(codec);
    const input = new PassThrough();
    const frames = [];
    const reader = new wire.FrameReader({ onFrame: (p) => frames.push(p.length), onError: () => {} });
    const replies = [];
    const done = worker.serve({
      input,
      write: (frame) => {
        reader.push(frame);
        replies.push(...wire.decodeFrames(frame, { codec }));
      },
    });
    const command = 'c'.repeat(LIMIT - 60);
    const request = { id: 1, command, args: {} };
    assert.ok(payloadSize(codec, request) <= LIMIT);
    input.write(c.encodeFrame(request));
    input.end();
    await done;
    const reply = replies.find((r) => r.id === 1);
    assert.equal(reply.error.type, 'ResultTooLarge');
    assert.ok(frames.every((n) => n <= LIMIT), String(frames));
  });
}

// Known leftover of round 3/4: esm_main.mjs imported the worker before the
// bridge, and an ES module's imports run before its body: a module it
// imports ahead of the bridge, printing when loaded, wrote into the frame
// stream, which the pool refuses (the worker is replaced at start).
test('an ES module worker whose first import prints at load time keeps stdout clean', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-node-round5-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(
    path.join(dir, 'noisy.mjs'),
    "console.log('round5: console.log at load');\nprocess.stdout.write('round5: stdout.write at load\\n');\n"
  );
  const script = path.join(dir, 'worker.mjs');
  fs.writeFileSync(
    script,
    "import './noisy.mjs';\nimport { Worker } from 'snakepit-bridge';\n" +
      'new Worker({ commands: { hi: () => "hi" } }).run();\n'
  );
  const w = new WorkerProcess(ESM_MAIN, { args: [script, '--mode', 'pool-worker'], env: { NODE_PATH: nodePath() } });
  t.after(() => w.kill());
  const hello = await w.next((f) => f.type === 'hello', WAIT_MS);
  assert.equal(hello.protocol, 1);
  assert.equal((await call(w, 1, 'hi')).result, 'hi');
  assert.deepEqual(await w.close(), { code: 0, signal: null });
  assert.match(w.stderr, /round5: console\.log at load/);
  assert.match(w.stderr, /round5: stdout\.write at load/);
});

if (CODECS.includes('msgpack')) {
  // protocol.md section 3: "MessagePack `ext` values reach handlers as the
  // library's own type and are written back as the same `ext`: ...
  // `ExtData` in Node.js", the exceptions being the Python library's. The
  // library decoded type -1 (the timestamp) to a Date: nanoseconds were
  // lost on the way back, and a -1 that is no valid timestamp made its
  // whole frame a ProtocolError.
  test('MessagePack: an ext of type -1 reaches the handler as an ExtData and goes back byte for byte', async () => {
    const lib = wire.loadMsgpack();
    const codec = wire.getCodec('msgpack');
    const seen = [];
    const worker = new bridge.Worker({
      codec: 'msgpack',
      commands: {
        echo: (args) => {
          seen.push(args.t);
          return args;
        },
      },
    });
    const nanos = Buffer.alloc(12);
    nanos.writeUInt32BE(123456789, 0);
    nanos.writeBigInt64BE(1n, 4);
    const cases = [nanos, Buffer.from([0, 0, 0, 7]), Buffer.alloc(5, 0xff), Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])];
    const input = new PassThrough();
    const out = [];
    const raw = [];
    const done = worker.serve({
      input,
      write: (frame) => {
        raw.push(frame);
        out.push(...wire.decodeFrames(frame, { codec }));
      },
    });
    cases.forEach((data, i) => {
      const body = Buffer.from(lib.encode({ id: i + 1, command: 'echo', args: { t: new lib.ExtData(-1, data) } }));
      const head = Buffer.alloc(4);
      head.writeUInt32BE(body.length);
      input.write(Buffer.concat([head, body]));
    });
    input.end();
    await done;
    cases.forEach((data, i) => {
      const reply = out.find((f) => f.id === i + 1);
      assert.equal(reply.success, true, JSON.stringify(reply));
      assert.ok(seen[i] instanceof lib.ExtData, String(seen[i]));
      assert.deepEqual([seen[i].type, Buffer.from(seen[i].data)], [-1, data]);
      assert.deepEqual([reply.result.t.type, Buffer.from(reply.result.t.data)], [-1, data]);
    });
    // Byte for byte: the reply holds the request's ext as it was.
    const all = Buffer.concat(raw);
    assert.ok(all.includes(Buffer.concat([Buffer.from([0xc7, 12, 0xff]), nanos])));
    assert.equal(out.filter((f) => f.id === 0).length, 0, JSON.stringify(out));
  });
}

// protocol.md section 4: an unknown `type` is a ProtocolError with id 0. Its
// message quoted the whole type, which may be as long as the frame: the
// reply was then larger than the pool reads (now it would be a
// ResultTooLarge under id 0). It is quoted briefly, as the Ruby bridge does.
test('the ProtocolError for an unknown type quotes it briefly', async () => {
  for (const name of CODECS) {
    const codec = wire.getCodec(name);
    const worker = new bridge.Worker({ codec: name, maxFrameSize: 100000 });
    const input = new PassThrough();
    const out = [];
    const done = worker.serve({ input, write: (b) => out.push(...wire.decodeFrames(b, { codec })) });
    input.write(codec.encodeFrame({ type: `${'\u{1F600}'.repeat(20000)}`, id: 1 }));
    input.write(codec.encodeFrame({ type: 'y'.repeat(99900) }));
    input.end(codec.encodeFrame({ id: 2, command: 'ping', args: {} }));
    await done;
    const errors = out.filter((f) => f.id === 0);
    assert.equal(errors.length, 2, name);
    for (const e of errors) {
      assert.equal(e.error.type, 'ProtocolError', name);
      assert.match(e.error.message, /^unknown frame type "[^"]{1,200}\.\.\. \(\d+ characters\)$/);
    }
    assert.equal(out.find((f) => f.id === 2).success, true);
  }
});

// Round-3 leftover: frames were written with a blocking write, so while the
// pool did not read stdout (a stream's reader fallen behind, protocol.md
// section 5) no JavaScript ran in the worker. Now what the pipe does not
// take waits for a timer: the worker runs its handlers meanwhile, and
// every frame still arrives whole and in order once the pool reads again,
// also past the 8 MiB the bridge queues before it waits.
test('while the pool does not read stdout, handlers run on and the frames arrive whole and in order', async (t) => {
  const w = new WorkerProcess(ROUND5_WORKER, { env: { NODE_PATH: nodePath() } });
  t.after(() => w.kill());
  await w.next((f) => f.type === 'hello', WAIT_MS);
  w.child.stdout.pause();
  const sizes = [6 << 20, 10, 6 << 20, 20];
  sizes.forEach((n, i) => w.request(i + 1, 'big', { n }));
  w.request(10, 'note', { text: 'ran while stdout was full' });
  const deadline = Date.now() + WAIT_MS;
  while (!w.stderr.includes('round5: note ran while stdout was full')) {
    assert.ok(Date.now() < deadline, `the handler never ran; stderr:\n${w.stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const order = [];
  const all = w.next((f) => {
    order.push(f.id);
    return f.id === 10;
  }, WAIT_MS);
  w.child.stdout.resume();
  await all;
  for (let i = 0; i < sizes.length; i++) {
    const reply = await w.reply(i + 1, WAIT_MS);
    assert.equal(reply.result.length, sizes[i]);
  }
  assert.deepEqual(await w.close(), { code: 0, signal: null });
});

// The end of stdin while replies still wait for the pool to read: they are
// written before the worker exits 0, not cut off by the exit.
test('EOF while replies wait for the pool to read: they arrive whole, then the worker exits 0', async (t) => {
  const w = new WorkerProcess(ROUND5_WORKER, { env: { NODE_PATH: nodePath() } });
  t.after(() => w.kill());
  await w.next((f) => f.type === 'hello', WAIT_MS);
  w.child.stdout.pause();
  w.request(1, 'big', { n: 4 << 20 });
  w.request(2, 'note', { text: 'last' });
  const deadline = Date.now() + WAIT_MS;
  while (!w.stderr.includes('round5: note last')) {
    assert.ok(Date.now() < deadline, `the handler never ran; stderr:\n${w.stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  w.child.stdin.end();
  // Still there: its replies wait.
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(w.child.exitCode, null);
  w.child.stdout.resume();
  assert.equal((await w.reply(1, WAIT_MS)).result.length, 4 << 20);
  assert.equal((await w.reply(2, WAIT_MS)).result, 'last');
  assert.deepEqual(await w.close(), { code: 0, signal: null });
});

// The same for a handler that ends the process itself: the replies made
// before process.exit() waited for the pool to read, and go out before
// the worker exits with the handler's code.
test('process.exit() in a handler while replies wait: they arrive whole before the exit', async (t) => {
  const w = new WorkerProcess(ROUND5_WORKER, { env: { NODE_PATH: nodePath() } });
  t.after(() => w.kill());
  await w.next((f) => f.type === 'hello', WAIT_MS);
  w.child.stdout.pause();
  w.request(1, 'big', { n: 4 << 20 });
  w.request(2, 'note', { text: 'before exit' });
  const deadline = Date.now() + WAIT_MS;
  while (!w.stderr.includes('round5: note before exit')) {
    assert.ok(Date.now() < deadline, `the handler never ran; stderr:\n${w.stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  w.request(3, 'exit', { code: 3 });
  w.child.stdout.resume();
  assert.equal((await w.reply(1, WAIT_MS)).result.length, 4 << 20);
  assert.equal((await w.reply(2, WAIT_MS)).result, 'before exit');
  assert.deepEqual(await w.exited, { code: 3, signal: null });
  assert.equal(w.stdoutError, null);
});
