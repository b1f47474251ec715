'use strict';

// Outside review, round 4: what a handler author writing ES modules or
// TypeScript meets (named imports, the declared types), handlers returning
// odd promises, a sender that ignores the declared max_concurrency,
// cancellation seen from a listener on ctx.signal, and host replies whose
// fields are not the declared types. Each test names the promise of the
// README, docs/bridges.md, docs/protocol.md or types/*.d.ts it checks.
// Bounds on waiting only turn hangs into failures; nothing is timed for
// speed.

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
const ROUND4_WORKER = path.join(__dirname, 'round4_worker.js');
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

// The worker finds @msgpack/msgpack where this test process did, also when
// that is only on NODE_PATH.
function nodePath() {
  return [bridgeNodePath(), process.env.NODE_PATH].filter(Boolean).join(path.delimiter);
}

async function spawn(t, script, { codec = 'json', env = {}, args } = {}) {
  const w = new WorkerProcess(script, { codec, env: { NODE_PATH: nodePath(), ...env }, args });
  t.after(() => w.kill());
  await w.next((f) => f.type === 'hello', WAIT_MS);
  return w;
}

function tempDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-node-round4-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// `const { A, B: c } = require('x');` as `import { A, B as c } from 'x';`:
// a README example as the same program written as an ES module.
function asEsModule(source) {
  const out = source.replace(
    /const \{([^}]*)\} = require\('([^']+)'\);/g,
    (_, names, from) => `import {${names.replace(/(\w+)\s*:\s*(\w+)/g, '$1 as $2')}} from '${from}';`
  );
  assert.doesNotMatch(out, /require\(/, 'every require became an import');
  return out;
}

function readmeBlocks() {
  const readme = fs.readFileSync(path.join(BRIDGE_DIR, 'README.md'), 'utf8');
  const complete = readme.match(/## A complete worker\n+```js\n([\s\S]*?)```/);
  const generic = readme.match(/Reuse them in your own worker with\n+```js\n([\s\S]*?)```/);
  assert.ok(complete && generic, 'README has its two worker examples');
  return { complete: complete[1], generic: generic[1] };
}

const isReply = (f) => f.type === undefined || f.type === 'response';

// Answers the session host calls of the README's `visits` from `store`.
async function answerSession(w, store) {
  const call = await w.next((f) => f.type === 'host_call', WAIT_MS);
  let result = null;
  if (call.function === 'session.get') result = store.has(call.args.key) ? store.get(call.args.key) : null;
  else store.set(call.args.key, call.args.value);
  w.send({ type: 'host_reply', id: call.id, success: true, result });
}

for (const codec of CODECS) {
  // docs/bridges.md: an ES module worker "runs through a small launcher
  // that lets its `import ... from 'snakepit-bridge'` find the bridge", and
  // types/index.d.ts declares every export as a named one. Before the fix
  // only `Worker` could be imported by name: the README's genericCommands
  // example, written as an ES module, failed to load.
  test(`ES modules import every export by name, and the README examples run as ES modules (${codec})`,
    async (t) => {
      const dir = tempDir(t);
      const { complete, generic } = readmeBlocks();
      const names = Object.keys(bridge).sort();
      const namesScript = path.join(dir, 'names.mjs');
      fs.writeFileSync(namesScript, [
        `import { ${names.join(', ')} } from 'snakepit-bridge';`,
        `const imported = { ${names.join(', ')} };`,
        'new Worker({ commands: {',
        '  names: () => Object.keys(imported).filter((k) => imported[k] !== undefined).sort(),',
        '  printing() { console.log("to the log"); process.stdout.write("also to the log\\n"); return "printed"; },',
        '} }).run();',
      ].join('\n'));
      const w0 = await spawn(t, ESM_MAIN, { codec, args: [namesScript, '--mode', 'pool-worker'] });
      assert.deepEqual((await w0.call(1, 'names')).result, names, w0.stderr);
      assert.equal((await w0.call(2, 'printing')).result, 'printed');
      assert.deepEqual(await w0.close(), { code: 0, signal: null }, w0.stderr);
      assert.match(w0.stderr, /to the log\n[\s\S]*also to the log\n/);

      const genericScript = path.join(dir, 'generic.mjs');
      fs.writeFileSync(genericScript, asEsModule(generic));
      const w1 = await spawn(t, ESM_MAIN, { codec, args: [genericScript, '--mode', 'pool-worker'] });
      const ping = await w1.call(1, 'ping', {});
      assert.equal(ping.result.bridge_type, 'generic_javascript', JSON.stringify(ping));
      assert.deepEqual((await w1.call(2, 'myCommand', { a: 1 })).result, { a: 1 });
      assert.deepEqual(await w1.close(), { code: 0, signal: null }, w1.stderr);

      const completeScript = path.join(dir, 'my_worker.mjs');
      fs.writeFileSync(completeScript, asEsModule(complete));
      const w = await spawn(t, ESM_MAIN, { codec, args: [completeScript, '--mode', 'pool-worker'] });
      assert.deepEqual((await w.call(1, 'greet', { name: 'Ada' })).result, { greeting: 'Hello, Ada!' });
      w.request(2, 'count', { to: 2 }, { stream: true });
      assert.deepEqual((await w.next((f) => f.type === 'chunk' && f.id === 2, WAIT_MS)).data, { i: 1 });
      assert.deepEqual((await w.next((f) => f.type === 'chunk' && f.id === 2, WAIT_MS)).data, { i: 2 });
      assert.deepEqual((await w.reply(2, WAIT_MS)).result, { counted: 2 });
      w.request(3, 'count', { to: 1000000 });
      w.send({ type: 'cancel', id: 3 });
      assert.equal((await w.reply(3, WAIT_MS)).error.type, 'Cancelled');
      const store = new Map();
      for (const [id, visits] of [[4, 1], [5, 2]]) {
        w.request(id, 'visits', {}, { session_id: 's' });
        await answerSession(w, store);
        await answerSession(w, store);
        assert.deepEqual((await w.reply(id, WAIT_MS)).result, { visits });
      }
      const fail = await w.call(6, 'fail', { item: 'x' });
      assert.deepEqual([fail.error.type, fail.error.message], ['RangeError', 'no such item: x']);
      assert.equal((await w.call(7, 'shout', { text: 'hi' })).result, 'HI');
      assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
      assert.deepEqual(w.frames, [], 'no frame beyond those awaited');
    });

  // README, Errors: "A handler that throws (or whose promise rejects) gets
  // a failed reply"; a result is adopted "as `await` would adopt it". A
  // native promise whose `constructor` getter throws makes `await` reject;
  // before the fix Promise.resolve threw inside the serve loop, an uncaught
  // exception that ended the worker with exit code 1.
  test(`a promise whose constructor getter throws is a failed reply, and the worker serves on (${codec})`,
    async (t) => {
      const w = await spawn(t, ROUND4_WORKER, { codec });
      // In one write with the next request: the frame behind it is served too.
      w.sendRaw(Buffer.concat([
        w.codec.encodeFrame({ id: 1, command: 'ctorThrows', args: {} }),
        w.codec.encodeFrame({ id: 2, command: 'echo', args: { after: true } }),
      ]));
      const r = await w.reply(1, WAIT_MS);
      assert.deepEqual([r.success, r.error.type, r.error.message], [false, 'TypeError', 'constructor getter'],
        JSON.stringify(r));
      assert.deepEqual((await w.reply(2, WAIT_MS)).result.echoed, { after: true });
      assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
    });

  // docs/protocol.md, hello: the pool sends at most max_concurrency calls;
  // README: "extra calls would wait in a queue"; and "The bridge must never
  // crash on input". A sender that ignores the hello writes 20,000 quick
  // calls behind one that waits: before the fix, draining the queue
  // recursed once per queued synchronous call and overflowed the stack.
  test(`20,000 calls queued past max_concurrency drain, one reply each (${codec})`, async (t) => {
    const w = await spawn(t, ROUND4_WORKER, { codec, env: { SNAKEPIT_MAX_CONCURRENCY: '1' } });
    w.request(1, 'gate');
    const call = await w.next((f) => f.type === 'host_call', WAIT_MS);
    const n = 20000;
    const frames = [];
    for (let id = 2; id <= n + 1; id++) frames.push(w.codec.encodeFrame({ id, command: 'echo', args: { id } }));
    w.sendRaw(Buffer.concat(frames));
    w.send({ type: 'host_reply', id: call.id, success: true, result: 'open' });
    w.child.stdin.end();
    const exit = await w.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, w.stderr.slice(-2000));
    assert.equal(w.stdoutError, null);
    const replies = w.frames.filter(isReply);
    assert.equal(replies.length, n + 1);
    assert.deepEqual(replies.find((f) => f.id === 1).result, { gate: 'open' });
    const ids = new Set();
    for (const f of replies) {
      assert.equal(f.success, true, JSON.stringify(f).slice(0, 300));
      if (f.id !== 1) assert.equal(f.result.echoed.id, f.id);
      ids.add(f.id);
    }
    assert.equal(ids.size, n + 1, 'one reply per id');
  });

  // docs/bridges.md, the context side by side: `ctx.sendChunk(data)`
  // "returns `false` and sends nothing without a stream or once the call
  // was answered or cancelled". A listener on ctx.signal runs when the call
  // is cancelled, before the Cancelled reply is made: before the fix its
  // chunk was written (and sendChunk returned true).
  test(`sendChunk from a listener on ctx.signal sends nothing once the call is cancelled (${codec})`,
    async (t) => {
      const w = await spawn(t, ROUND4_WORKER, { codec });
      w.request(1, 'streamUntilCancel', {}, { stream: true });
      assert.equal((await w.next((f) => f.type === 'chunk' && f.id === 1, WAIT_MS)).data, 'first');
      w.send({ type: 'cancel', id: 1 });
      assert.equal((await w.reply(1, WAIT_MS)).error.type, 'Cancelled');
      assert.deepEqual((await w.call(2, 'report', { id: 1 })).result, { cancelled: true, sent: false });
      assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
      assert.deepEqual(w.frames, [], 'no chunk after the first');
    });

  // types/index.d.ts: `HostCallError.hostTraceback?: string`, "the host's
  // traceback, when it sent one". A host_reply whose traceback is a map or a
  // number (a hostile sender) gives none; before the fix the handler got
  // the map or the number.
  test(`a host_reply traceback that is not text is not kept as hostTraceback (${codec})`, async (t) => {
    const w = await spawn(t, ROUND4_WORKER, { codec });
    const cases = [
      [{ a: 1 }, false, null],
      [5, false, null],
      [['x'], false, null],
      ['Traceback: line 1', true, 'Traceback: line 1'],
    ];
    let id = 1;
    for (const [traceback, kept, value] of cases) {
      w.request(id, 'host');
      const call = await w.next((f) => f.type === 'host_call' && f.request_id === id, WAIT_MS);
      w.send({ type: 'host_reply', id: call.id, success: false, error: { type: 'KeyError', message: 'm', traceback } });
      const r = (await w.reply(id, WAIT_MS)).result;
      const seen = JSON.stringify(r);
      assert.deepEqual([r.name, r.type, r.message], ['KeyError', 'KeyError', 'm'], seen);
      assert.equal(r.hasHostTraceback, kept, seen);
      assert.equal(r.hostTracebackType, kept ? 'string' : 'undefined', seen);
      assert.equal(r.hostTraceback, value, seen);
      id++;
    }
    assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
  });

  // README: on `cancel` the bridge "marks ctx.cancelled, fires ctx.signal,
  // fails pending callHost waits with a CancelledError, and replies
  // Cancelled at once, even if the handler ignores the signal; whatever the
  // handler returns later is dropped". With one call at a time: the call
  // queued behind gets the slot, the late host_reply for the cancelled
  // call's host call is ignored, and the queued call's own host call is
  // answered.
  test(`a cancelled call that ignores its signal frees its slot; its late host reply is ignored (${codec})`,
    async (t) => {
      const w = await spawn(t, ROUND4_WORKER, { codec, env: { SNAKEPIT_MAX_CONCURRENCY: '1' } });
      w.request(1, 'ignoring');
      const first = await w.next((f) => f.type === 'host_call' && f.request_id === 1, WAIT_MS);
      w.request(2, 'gate'); // queued: the slot is taken
      w.send({ type: 'cancel', id: 1 });
      assert.equal((await w.reply(1, WAIT_MS)).error.type, 'Cancelled');
      const second = await w.next((f) => f.type === 'host_call' && f.request_id === 2, WAIT_MS);
      assert.notEqual(second.id, first.id);
      w.send({ type: 'host_reply', id: first.id, success: true, result: 'too late' });
      w.send({ type: 'host_reply', id: second.id, success: true, result: 'open' });
      assert.deepEqual((await w.reply(2, WAIT_MS)).result, { gate: 'open' });
      const report = (await w.call(3, 'report', { id: 1 })).result;
      assert.deepEqual(report, {
        aborted: { before: false, after: true, cancelled: true },
        hostCall: { name: 'Cancelled', isCancelledError: true },
      });
      assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
      assert.deepEqual(w.frames, [], 'no second reply for the cancelled call');
    });

  // docs/protocol.md section 4: "a length above the worker's limit" is
  // answered with a ProtocolError and its payload discarded; "the stream
  // ends inside a frame": exit 0, nothing sent. The largest length a header
  // can announce, 2^32 - 1, with the input ending inside its payload; and
  // a zero-length frame, a ProtocolError in either codec.
  test(`a zero-length frame, then one announcing 2^32 - 1 bytes cut short by EOF (${codec})`, async (t) => {
    const w = await spawn(t, ROUND4_WORKER, { codec });
    w.sendRaw(Buffer.alloc(4));
    const r0 = await w.reply(0, WAIT_MS);
    assert.equal(r0.error.type, 'ProtocolError');
    assert.equal((await w.call(1, 'echo', { x: 1 })).result.echoed.x, 1);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(0xffffffff, 0);
    // A request inside the payload being skipped is never read.
    w.sendRaw(Buffer.concat([header, w.codec.encodeFrame({ id: 2, command: 'echo', args: {} })]));
    const big = await w.reply(0, WAIT_MS);
    assert.equal(big.error.type, 'ProtocolError');
    assert.match(big.error.message, /4294967295 bytes/);
    assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
    assert.deepEqual(w.frames, [], 'nothing after the ProtocolError');
  });
}

// types/index.d.ts: `maxFrameSize?: number`, "larger incoming frames are
// skipped". A string or NaN compared with a length is never smaller, so it
// set no limit at all; a negative number skipped every frame. Now each is a
// RangeError, as for maxConcurrency; null and leaving it out give 64 MiB.
test('maxFrameSize that is not a whole number of at least 1 is a RangeError', () => {
  for (const bad of ['10', NaN, -1, 0, 1.5, true, {}]) {
    assert.throws(() => new bridge.Worker({ maxFrameSize: bad }), RangeError, String(bad));
  }
  assert.equal(new bridge.Worker({ maxFrameSize: null }).maxFrameSize, wire.DEFAULT_MAX_FRAME_SIZE);
  assert.equal(new bridge.Worker().maxFrameSize, wire.DEFAULT_MAX_FRAME_SIZE);
  assert.equal(new bridge.Worker({ maxFrameSize: 10 }).maxFrameSize, 10);
});

// types/wire.d.ts: `Codec.decodePayload(payload: Uint8Array)`. A plain
// Uint8Array has a toString of its own (the byte values, comma-separated):
// before the fix the JSON codec refused every such payload as not JSON.
test('codecs decode a payload given as a plain Uint8Array, a view into a larger buffer', () => {
  for (const name of CODECS) {
    const codec = wire.getCodec(name);
    const frame = codec.encodeFrame({ id: 1, command: 'echo', args: { s: 'é' } });
    const padded = new Uint8Array(frame.length + 3);
    padded.set(frame, 3);
    const payload = new Uint8Array(padded.buffer, 3 + wire.HEADER_SIZE, frame.length - wire.HEADER_SIZE);
    assert.ok(!Buffer.isBuffer(payload));
    assert.deepEqual(codec.decodePayload(payload), { id: 1, command: 'echo', args: { s: 'é' } }, name);
  }
  const badUtf8 = new Uint8Array(Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]));
  assert.throws(() => wire.jsonCodec.decodePayload(badUtf8), (err) => err.kind === 'invalid_utf8');
});

// README, Codecs: "A `Date` becomes an ISO string under JSON (its
// `toJSON`), but a MessagePack timestamp extension under MessagePack ... A
// `Map` or `Set` becomes `{}` in both codecs".
test('a Date, a Map and a Set in a result go out as the README says', async () => {
  for (const name of CODECS) {
    const codec = wire.getCodec(name);
    const worker = new bridge.Worker({
      codec: name,
      commands: { values: () => ({ d: new Date(0), m: new Map([['a', 1]]), s: new Set([1]) }) },
    });
    const input = new PassThrough();
    const out = [];
    const done = worker.serve({ input, write: (b) => out.push(...wire.decodeFrames(b, { codec })) });
    input.end(codec.encodeFrame({ id: 1, command: 'values', args: {} }));
    await done;
    const r = out.find((f) => f.id === 1);
    assert.deepEqual(r.result.m, {}, name);
    assert.deepEqual(r.result.s, {}, name);
    if (name === 'json') {
      assert.equal(r.result.d, '1970-01-01T00:00:00.000Z');
    } else {
      // The timestamp extension (type -1), which the bridge's codec reads
      // back as an ExtData (round 5), holding the Date's time.
      const lib = wire.loadMsgpack();
      assert.ok(r.result.d instanceof lib.ExtData, JSON.stringify(r));
      assert.equal(r.result.d.type, -1);
      assert.equal(lib.decodeTimestampExtension(r.result.d.data).getTime(), 0);
    }
  }
});

// README, Tracing: with @opentelemetry/api installed and a traceparent, the
// handler runs inside a span. The propagator and the tracer are the
// application's code, run on the request's fields; the README promises a
// reply to each call and "the worker serves on". Before the fix a
// propagator that threw on a traceparent, or a span whose end() threw,
// threw out of the serve loop: the worker exited with code 1.
test('a propagator or span of the application that throws leaves the call answered', async (t) => {
  let haveOtel = true;
  try {
    require('@opentelemetry/api');
    require('@opentelemetry/core');
  } catch (_) {
    haveOtel = false;
  }
  if (!haveOtel) {
    t.skip('@opentelemetry/api and @opentelemetry/core are not installed');
    return;
  }
  const w = await spawn(t, path.join(__dirname, 'round4_otel_worker.js'));
  const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
  w.sendRaw(Buffer.concat([
    w.codec.encodeFrame({ id: 1, command: 'plain', args: {}, traceparent: 'throw-me' }),
    w.codec.encodeFrame({ id: 2, command: 'plain', args: {}, traceparent: tp }),
    w.codec.encodeFrame({ id: 3, command: 'boom', args: {}, traceparent: tp }),
    w.codec.encodeFrame({ id: 4, command: 'later', args: {}, traceparent: tp }),
  ]));
  assert.equal((await w.reply(1, WAIT_MS)).result, 'plain');
  assert.equal((await w.reply(2, WAIT_MS)).result, 'plain');
  const boom = await w.reply(3, WAIT_MS);
  assert.deepEqual([boom.success, boom.error.type, boom.error.message], [false, 'Error', 'kaboom']);
  assert.equal((await w.reply(4, WAIT_MS)).result, 'later');
  assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
  assert.match(w.stderr, /request 1 runs untraced: starting its span failed: URIError: URI malformed/);
  assert.match(w.stderr, /ending a request's span failed: Error: end failed/);
  assert.deepEqual(w.frames, []);
});

// README: "`worker.serve({ input, write })` serves any readable stream";
// types/index.d.ts: `input: NodeJS.ReadableStream`. A stream of Uint8Array
// chunks (Readable.from, Readable.fromWeb) is bytes as much as one of
// Buffers: before the fix the frame reader threw on such a chunk (an
// uncaught exception) and the call was never answered. A stream of text
// cannot hold frames: serve() rejects.
test('serve() reads a stream of Uint8Array chunks, and rejects a stream of text', async () => {
  const { Readable } = require('node:stream');
  const frames = [
    wire.jsonCodec.encodeFrame({ id: 1, command: 'echo', args: { a: 1 } }),
    wire.jsonCodec.encodeFrame({ id: 2, command: 'echo', args: { b: 2 } }),
  ];
  const bytes = Buffer.concat(frames);
  // Split mid-header, as plain Uint8Array views that are not Buffers.
  const chunks = [new Uint8Array(bytes.subarray(0, 2)), new Uint8Array(bytes.subarray(2))];
  assert.ok(!Buffer.isBuffer(chunks[0]));
  const out = [];
  const worker = new bridge.Worker({ commands: bridge.genericCommands() });
  await worker.serve({ input: Readable.from(chunks), write: (b) => out.push(...wire.decodeFrames(b)) });
  assert.deepEqual(out.filter(isReply).map((f) => [f.id, f.result.echoed]), [[1, { a: 1 }], [2, { b: 2 }]]);

  const text = new PassThrough();
  text.setEncoding('utf8');
  const served = new bridge.Worker().serve({ input: text, write: () => {} });
  text.end(bytes);
  await assert.rejects(served, (err) => err instanceof TypeError && /reads bytes/.test(err.message));
});

// docs/bridges.md, "Node.js": its example worker, as written (CommonJS)
// and as the same program written as an ES module: `console.log` goes to
// the log, chunks only for a caller that streams, sessions through host
// calls, a thrown RangeError a failed reply of that type.
for (const kind of ['commonjs', 'esm']) {
  test(`the docs/bridges.md Node.js example runs as written (${kind})`, async (t) => {
    const docs = fs.readFileSync(path.join(BRIDGE_DIR, '../../docs/bridges.md'), 'utf8');
    const match = docs.match(/## Node\.js\n+```js\n([\s\S]*?)```/);
    assert.ok(match, 'docs/bridges.md has its Node.js example');
    const dir = tempDir(t);
    const script = path.join(dir, kind === 'esm' ? 'worker.mjs' : 'worker.js');
    fs.writeFileSync(script, kind === 'esm' ? asEsModule(match[1]) : match[1]);
    const w = kind === 'esm'
      ? await spawn(t, ESM_MAIN, { args: [script, '--mode', 'pool-worker'] })
      : await spawn(t, script);
    assert.deepEqual((await w.call(1, 'greet', { name: 'Ada' })).result, { greeting: 'Hello, Ada!' });
    w.request(2, 'count', { to: 3 }, { stream: true });
    for (const i of [1, 2, 3]) {
      assert.equal((await w.next((f) => f.type === 'chunk' && f.id === 2, WAIT_MS)).data, i);
    }
    assert.deepEqual((await w.reply(2, WAIT_MS)).result, { counted: 3 });
    assert.deepEqual((await w.call(3, 'count', { to: 2 })).result, { counted: 2 }, 'no chunks without a stream');
    const store = new Map();
    w.request(4, 'visits', {}, { session_id: 's' });
    await answerSession(w, store);
    await answerSession(w, store);
    assert.deepEqual((await w.reply(4, WAIT_MS)).result, { visits: 1 });
    const zero = await w.call(5, 'divide', { a: 1, b: 0 });
    assert.deepEqual([zero.error.type, zero.error.message], ['RangeError', 'division by zero']);
    assert.equal((await w.call(6, 'divide', { a: 6, b: 3 })).result, 2);
    assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
    assert.match(w.stderr, /greeting Ada/);
    assert.deepEqual(w.frames, [], 'no frame beyond those awaited');
  });
}
