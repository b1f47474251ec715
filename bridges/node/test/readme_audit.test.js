'use strict';

// Promises of README.md (and of docs/bridges.md, docs/protocol.md where they
// describe the Node.js worker) that the other suites do not already show,
// checked against real worker processes over pipes. Each test quotes the
// promise it checks.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const wire = require('../lib/wire');
const { BRIDGE_DIR, GENERIC_WORKER, WorkerProcess, scriptDir, until } = require('./helpers');

// `process.stdout` is taken before the bridge is required: README, "Stdout
// and stdin belong to the protocol". Options come from the environment so that one
// script serves every test.
const SCRIPT = `
const early = process.stdout;
const fs = require('node:fs');
const { Worker, CancelledError } = require('snakepit-bridge');

class BadInput extends TypeError {}

const options = {
  sigint: process.env.AUDIT_SIGINT === '1',
  commands: {
    // Waits (asynchronously) until the file args.until exists.
    async hold(args, ctx) {
      process.stderr.write('hold: started ' + ctx.requestId + '\\n');
      while (!fs.existsSync(args.until)) await new Promise((r) => setTimeout(r, 5));
      return 'released ' + ctx.requestId;
    },
    // Blocks the thread until the file args.until exists.
    busy(args) {
      process.stderr.write('busy: started\\n');
      while (!fs.existsSync(args.until)) { /* spin */ }
      return 'busy done';
    },
    async waitHost(args, ctx) {
      try {
        await ctx.callHost('never.answered', {});
        process.stderr.write('waitHost: resolved\\n');
      } catch (err) {
        process.stderr.write('waitHost: rejected ' + (err instanceof CancelledError) + ' ' + err.name + '\\n');
      }
      return 'late';
    },
    ctx(args, ctx) {
      return { tracestate: ctx.tracestate, isWorker: ctx.worker === worker, baggage: ctx.baggage };
    },
    logs(args, ctx) {
      ctx.log.debug('audit-debug', 1);
      ctx.log.warn('audit-warn', 2);
      ctx.log.error('audit-error', 3);
      return null;
    },
    prints() {
      early.write('early-stdout-write\\n');
      console.dir({ dir: 'audit-dir' });
      console.count('audit-count');
      console.group('audit-group');
      console.log('audit-in-group');
      console.groupEnd();
      console.trace('audit-trace');
      process.stdout.write('audit-process-stdout\\n');
      return 'printed';
    },
    echoArgs(args) { return args; },
    deepResult(args) {
      let v = 1;
      for (let i = 0; i < args.n; i++) v = [v];
      return v;
    },
    thenableThrows() {
      return { then() { throw new Error('then threw'); } };
    },
    badInput() { throw new BadInput('not a number'); },
    ok() { return 'ok'; },
    notFinite() { return { nan: NaN, inf: Infinity }; },
  },
};
if (process.env.AUDIT_MAX_FRAME) options.maxFrameSize = Number(process.env.AUDIT_MAX_FRAME);
if (process.env.AUDIT_NAME) options.name = process.env.AUDIT_NAME;
if (process.env.AUDIT_MAX_CONCURRENCY) options.maxConcurrency = Number(process.env.AUDIT_MAX_CONCURRENCY);
const worker = new Worker(options);
worker.run();
`;

function start(t, { codec = 'json', env = {} } = {}) {
  const { dir, script } = scriptDir(t, SCRIPT, 'snakepit-node-audit-');
  const w = new WorkerProcess(script, { codec, env });
  t.after(() => w.kill());
  return { w, dir };
}

// The reply to `id`, or a rejection as soon as the worker exits without one
// (no timer is left behind to hold the test process open).
async function replyOrExit(w, id) {
  let exit = null;
  w.exited.then((e) => {
    exit = e;
  });
  const isReply = (f) => (f.type === undefined || f.type === 'response') && f.id === id;
  await until(() => exit !== null || w.frames.some(isReply), `a reply to ${id} or the worker's exit`);
  const i = w.frames.findIndex(isReply);
  if (i !== -1) return w.frames.splice(i, 1)[0];
  throw new Error(`the worker exited (${JSON.stringify(exit)}) without replying to ${id}; stderr:\n${w.stderr}`);
}

function frame(payload) {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(payload.length, 0);
  return Buffer.concat([header, payload]);
}

function nested(n) {
  let v = 1;
  for (let i = 0; i < n; i++) v = [v];
  return v;
}

function depthOf(v) {
  if (Array.isArray(v)) return 1 + Math.max(0, ...v.map(depthOf));
  if (v !== null && typeof v === 'object' && !ArrayBuffer.isView(v)) return 1 + Math.max(0, ...Object.values(v).map(depthOf));
  return 0;
}

// README, options table: "`name` | `snakepit-node` | the bridge name in `hello`".
test('the name option is the bridge name in hello', async (t) => {
  const { w } = start(t, { env: { AUDIT_NAME: 'my-bridge' } });
  const hello = await w.hello();
  assert.match(hello.bridge, /^my-bridge\/\d+\.\d+\.\d+$/, JSON.stringify(hello));
  await w.close();
  const plain = start(t).w;
  assert.match((await plain.hello()).bridge, /^snakepit-node\/\d+\.\d+\.\d+$/);
  await plain.close();
});

// README, the context: "`ctx.traceparent`, `ctx.tracestate` | W3C trace
// context of the caller, or `null`"; "`ctx.worker` | the `Worker`".
test('ctx.tracestate is the request field or null; ctx.worker is the Worker', async (t) => {
  const { w } = start(t);
  await w.hello();
  let r = await w.call(1, 'ctx', {}, { tracestate: 'congo=t61rcWkgMzE' });
  assert.deepStrictEqual(r.result, { tracestate: 'congo=t61rcWkgMzE', isWorker: true, baggage: null });
  r = await w.call(2, 'ctx');
  assert.deepStrictEqual(r.result, { tracestate: null, isWorker: true, baggage: null });
  await w.close();
});

// README, the context: "`ctx.log.info(...)` (also `debug`, `warn`, `error`) |
// a line on stderr, tagged with worker and request id".
test('ctx.log.debug, warn and error each write a tagged stderr line', async (t) => {
  const { w } = start(t, { env: { SNAKEPIT_WORKER_ID: 'pool_worker_9_z' } });
  await w.hello();
  assert.equal((await w.call(31, 'logs')).success, true);
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  for (const [level, text] of [['DEBUG', 'audit-debug 1'], ['WARN', 'audit-warn 2'], ['ERROR', 'audit-error 3']]) {
    const line = w.stderr.split('\n').find((l) => l.endsWith(text));
    assert.ok(line, `no line for ${text} in:\n${w.stderr}`);
    assert.ok(line.includes(level), line);
    assert.ok(line.includes('pool_worker_9_z'), line);
    assert.match(line, /\b31\b/, line);
  }
});

// README, "Stdout and stdin belong to the protocol": "`process.stdout`
// becomes a stream that writes to stderr and every `console` method writes
// to stderr ... Under a pool (`SNAKEPIT_PROTOCOL` is set) this happens as soon as the bridge is
// required". The script held `process.stdout` before requiring the bridge.
test('every console method and a stdout stream taken before the require write to stderr', async (t) => {
  const { w } = start(t);
  await w.hello();
  assert.equal((await w.call(1, 'prints')).result, 'printed');
  assert.equal((await w.call(2, 'ok')).result, 'ok', 'frames after the prints are intact');
  // close() fails the test if stdout carried anything but valid frames.
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  for (const text of ['early-stdout-write', 'audit-dir', 'audit-count: 1', 'audit-group', 'audit-in-group',
    'Trace: audit-trace', 'audit-process-stdout']) {
    assert.ok(w.stderr.includes(text), `${text} not on stderr:\n${w.stderr}`);
  }
});

// protocol.md section 4, "Frames a worker cannot use": a length of 0, a
// payload that does not decode (invalid UTF-8 too), a payload that is not a
// map -> ProtocolError with id 0; a request without a usable id ->
// InvalidRequest under id 0; a command that is not a string -> InvalidRequest
// under its id; "A missing `args` is not an error" (null too, README of the
// protocol: "treat a missing `args` as `{}`"). The worker keeps serving.
for (const codec of ['json', 'msgpack']) {
  test(`hostile frames get the documented failed replies and the worker serves on (${codec})`, async (t) => {
    const { w } = start(t, { codec });
    await w.hello();
    const protocolError = async (bytes, what) => {
      w.sendRaw(bytes);
      const r = await w.reply(0);
      assert.equal(r.success, false, what);
      assert.equal(r.error.type, 'ProtocolError', `${what}: ${JSON.stringify(r)}`);
      return r;
    };
    await protocolError(frame(Buffer.alloc(0)), 'an empty frame');
    await protocolError(frame(codec === 'json' ? Buffer.from('[1,2]') : Buffer.from([0x92, 1, 2])), 'an array');
    const utf8 = await protocolError(
      frame(codec === 'json'
        ? Buffer.from('{"id":1,"command":"ok","args":{"s":"\xff"}}', 'latin1')
        : Buffer.from([0x81, 0xa1, 0xff, 0x01])), // {"\xff": 1}
      'invalid UTF-8'
    );
    assert.match(utf8.error.message, /UTF-8/);
    for (const id of [0, -3, 1.5, '7', true, null]) {
      w.send({ id, command: 'ok', args: {} });
      const r = await w.reply(0);
      assert.equal(r.error.type, 'InvalidRequest', `id ${JSON.stringify(id)}: ${JSON.stringify(r)}`);
    }
    w.send({ id: 5, command: 42, args: {} });
    assert.equal((await w.reply(5)).error.type, 'InvalidRequest');
    w.send({ id: 6, command: 'echoArgs', args: null });
    assert.deepStrictEqual((await w.reply(6)).result, {});
    w.send({ type: 'hello', protocol: 1 });
    assert.equal((await w.reply(0)).error.type, 'ProtocolError', 'a frame type meant for the pool');
    assert.deepStrictEqual(await w.call(7, 'ok'), { id: 7, success: true, result: 'ok' });
    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  });
}

// README, options: "`maxFrameSize` | 64 MiB | larger incoming frames are
// skipped with a `ProtocolError` reply". A frame of exactly the limit is
// served; one byte more is refused and skipped.
test('maxFrameSize: a frame of exactly the limit is served, one byte more is skipped', async (t) => {
  const limit = 200;
  const { w } = start(t, { env: { AUDIT_MAX_FRAME: String(limit) } });
  await w.hello();
  const padded = (id, size) => {
    const text = JSON.stringify({ id, command: 'ok', args: {} });
    return frame(Buffer.from(text + ' '.repeat(size - Buffer.byteLength(text))));
  };
  w.sendRaw(padded(1, limit));
  assert.deepStrictEqual(await w.reply(1), { id: 1, success: true, result: 'ok' });
  w.sendRaw(padded(2, limit + 1));
  const r = await w.reply(0);
  assert.equal(r.error.type, 'ProtocolError');
  assert.match(r.error.message, /201 bytes/);
  assert.deepStrictEqual(await w.call(3, 'ok'), { id: 3, success: true, result: 'ok' });
  assert.equal(w.frames.filter((f) => f.id === 2).length, 0, 'the oversized request never ran');
  await w.close();
});

test('the default frame limit is 64 MiB: a larger frame gets a ProtocolError and is skipped', async (t) => {
  const w = new WorkerProcess(GENERIC_WORKER);
  t.after(() => w.kill());
  await w.hello();
  const size = 64 * 1024 * 1024 + 1;
  const header = Buffer.alloc(4);
  header.writeUInt32BE(size, 0);
  w.sendRaw(header);
  const r = await w.reply(0, 20000);
  assert.equal(r.error.type, 'ProtocolError');
  assert.match(r.error.message, new RegExp(`${size} bytes`));
  w.sendRaw(Buffer.alloc(size, 0x7b)); // '{' bytes: would be garbage if read as a frame
  assert.equal((await w.call(1, 'ping', {})).result.status, 'ok');
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
});

// protocol.md section 2: "a call's arguments or result may nest 126 levels
// ... The bundled bridges read and write up to that limit in both codecs."
for (const codec of ['json', 'msgpack']) {
  test(`frames nesting 127 levels are read and written (${codec})`, async (t) => {
    const { w } = start(t, { codec });
    await w.hello();
    // request map, args map, then 125 arrays: 127 levels.
    const request = { id: 1, command: 'echoArgs', args: { v: nested(125) } };
    assert.equal(depthOf(request), 127);
    w.send(request);
    const echoed = await w.reply(1);
    assert.equal(echoed.success, true, JSON.stringify(echoed).slice(0, 300));
    assert.equal(depthOf(echoed), 127);
    // reply map, then a result of 126 levels: 127.
    const r = await w.call(2, 'deepResult', { n: 126 });
    assert.equal(r.success, true, JSON.stringify(r).slice(0, 300));
    assert.equal(depthOf(r), 127);
    await w.close();
  });
}

// README, Concurrency and cancellation: "by default the bridge declares
// `sigint: false` ... and ignores SIGINT": also while a call runs, which
// goes on to its normal reply.
test('sigint: false: SIGINT during a call neither cancels it nor stops the worker', async (t) => {
  const { w, dir } = start(t);
  assert.equal((await w.hello()).capabilities.sigint, false);
  const release = path.join(dir, 'release');
  w.request(1, 'hold', { until: release });
  await until(() => w.stderr.includes('hold: started 1'), 'the call started');
  w.child.kill('SIGINT');
  await until(() => w.stderr.includes('SIGINT ignored'), 'the worker saw the SIGINT');
  fs.writeFileSync(release, '');
  assert.deepStrictEqual(await w.reply(1), { id: 1, success: true, result: 'released 1' });
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
});

// README: "With `new Worker({ sigint: true })`, SIGINT cancels the calls
// running at that moment as a `cancel` frame would" (every running call, not
// the ones waiting for a slot).
test('sigint: true: SIGINT cancels every running call, not the queued one', async (t) => {
  const { w, dir } = start(t, { env: { AUDIT_SIGINT: '1', AUDIT_MAX_CONCURRENCY: '2' } });
  const hello = await w.hello();
  assert.equal(hello.capabilities.sigint, true);
  assert.equal(hello.capabilities.max_concurrency, 2);
  const release = path.join(dir, 'release');
  for (const id of [1, 2, 3]) w.request(id, 'hold', { until: release });
  await until(() => w.stderr.includes('hold: started 1') && w.stderr.includes('hold: started 2'), 'two calls run');
  assert.ok(!w.stderr.includes('hold: started 3'), 'the third call waits for a slot');
  w.child.kill('SIGINT');
  for (const id of [1, 2]) {
    assert.deepStrictEqual((await w.reply(id)).error, { type: 'Cancelled', message: `request ${id} was cancelled` });
  }
  await until(() => w.stderr.includes('hold: started 3'), 'the queued call starts in a freed slot');
  fs.writeFileSync(release, '');
  assert.deepStrictEqual(await w.reply(3), { id: 3, success: true, result: 'released 3' });
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  assert.equal(w.frames.filter((f) => f.id === 1 || f.id === 2).length, 0, 'one reply per call');
});

// README: "A handler that blocks the thread is only interrupted once it
// returns, and if it has replied by then, the signal finds nothing to
// cancel."
test('sigint: true: a SIGINT during a blocking handler finds nothing to cancel once it replied', async (t) => {
  const { w, dir } = start(t, { env: { AUDIT_SIGINT: '1' } });
  await w.hello();
  const release = path.join(dir, 'release');
  w.request(1, 'busy', { until: release });
  await until(() => w.stderr.includes('busy: started'), 'the blocking call started');
  w.child.kill('SIGINT');
  fs.writeFileSync(release, '');
  assert.deepStrictEqual(await w.reply(1), { id: 1, success: true, result: 'busy done' });
  await until(() => w.stderr.includes('SIGINT between calls ignored'), 'the late signal was handled');
  assert.deepStrictEqual(await w.call(2, 'ok'), { id: 2, success: true, result: 'ok' });
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
});

// README: "between calls it [SIGINT] is ignored", also when the next request
// is read in the same poll of the event loop as the signal (here both arrive
// while a blocking handler holds the thread): the two are taken as signal
// first. Before, the call started from that read could be cancelled by the
// signal handled right after it.
test('sigint: true: a SIGINT read with the next request leaves that request alone', async (t) => {
  const { w, dir } = start(t, { env: { AUDIT_SIGINT: '1' } });
  await w.hello();
  const rounds = 8;
  const count = (text) => w.stderr.split(text).length - 1;
  for (let round = 1; round <= rounds; round++) {
    const blocking = 2 * round;
    const next = blocking + 1;
    const releaseBlocking = path.join(dir, `release-${blocking}`);
    const releaseNext = path.join(dir, `release-${next}`);
    w.request(blocking, 'busy', { until: releaseBlocking });
    await until(() => count('busy: started') === round, 'the blocking call started');
    w.child.kill('SIGINT');
    w.request(next, 'hold', { until: releaseNext });
    await new Promise((r) => setTimeout(r, 30));
    fs.writeFileSync(releaseBlocking, '');
    assert.deepStrictEqual(await w.reply(blocking), { id: blocking, success: true, result: 'busy done' });
    await until(() => count(`hold: started ${next}`) === 1, 'the next call started');
    await until(() => count('SIGINT between calls ignored') === round, 'the signal was handled');
    fs.writeFileSync(releaseNext, '');
    assert.deepStrictEqual(await w.reply(next), { id: next, success: true, result: `released ${next}` });
  }
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
});

// README: on `cancel` the bridge "fails pending `callHost` waits with a
// `CancelledError`, and replies `Cancelled` at once".
test('a cancel rejects the pending callHost with a CancelledError', async (t) => {
  const { w } = start(t);
  await w.hello();
  w.request(1, 'waitHost');
  await w.next((f) => f.type === 'host_call' && f.request_id === 1);
  w.send({ type: 'cancel', id: 1 });
  assert.equal((await w.reply(1)).error.type, 'Cancelled');
  await until(() => w.stderr.includes('waitHost: rejected'), 'the host call wait ended');
  assert.ok(w.stderr.includes('waitHost: rejected true Cancelled'), w.stderr);
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  assert.equal(w.frames.filter((f) => f.id === 1).length, 0, 'the late "late" result was dropped');
});

// README: "SIGTERM also exits 0", here while a call runs.
test('SIGTERM while a call runs: the worker exits 0', async (t) => {
  const { w, dir } = start(t);
  await w.hello();
  w.request(1, 'hold', { until: path.join(dir, 'never') });
  await until(() => w.stderr.includes('hold: started 1'), 'the call started');
  w.child.kill('SIGTERM');
  assert.deepStrictEqual(await w.exited, { code: 0, signal: null });
});

// README, Codecs: `@msgpack/msgpack` "is found beside the bridge, on
// `NODE_PATH`, or in a `node_modules` next to your script or the working
// directory". A copy of the bridge without node_modules of its own, so that
// only the place under test can provide the package.
test('@msgpack/msgpack is found next to the script, in the working directory or on NODE_PATH', (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-node-audit-msgpack-'));
  t.after(() => fs.rmSync(root, { recursive: true, force: true }));
  const bridgeHome = path.join(root, 'bridge-home');
  const copy = path.join(bridgeHome, 'snakepit-bridge');
  fs.mkdirSync(path.join(copy, 'lib'), { recursive: true });
  for (const f of fs.readdirSync(path.join(BRIDGE_DIR, 'lib'))) {
    fs.copyFileSync(path.join(BRIDGE_DIR, 'lib', f), path.join(copy, 'lib', f));
  }
  fs.copyFileSync(path.join(BRIDGE_DIR, 'package.json'), path.join(copy, 'package.json'));
  const real = path.join(BRIDGE_DIR, 'node_modules', '@msgpack', 'msgpack');
  const provide = (dir) => {
    fs.mkdirSync(path.join(dir, 'node_modules', '@msgpack'), { recursive: true });
    fs.symlinkSync(real, path.join(dir, 'node_modules', '@msgpack', 'msgpack'), 'dir');
  };
  const source = "const { Worker } = require('snakepit-bridge');\n" +
    'new Worker({ commands: { bytes: () => Buffer.from([1, 2, 255]) } }).run();\n';
  const dirs = {};
  for (const name of ['beside', 'plain', 'cwd', 'nodepath', 'nowhere']) {
    dirs[name] = path.join(root, name);
    fs.mkdirSync(dirs[name]);
  }
  fs.writeFileSync(path.join(dirs.beside, 'worker.js'), source);
  fs.writeFileSync(path.join(dirs.plain, 'worker.js'), source);
  provide(dirs.beside);
  provide(dirs.cwd);
  provide(dirs.nodepath);
  const nodePath = path.join(dirs.nodepath, 'node_modules');

  const codec = wire.getCodec('msgpack');
  const input = codec.encodeFrame({ id: 1, command: 'bytes', args: {} });
  const run = (script, cwd, extraNodePath) => {
    const env = { ...process.env, SNAKEPIT_PROTOCOL: '1', SNAKEPIT_CODEC: 'msgpack',
      NODE_PATH: [bridgeHome, extraNodePath].filter(Boolean).join(path.delimiter) };
    const out = spawnSync(process.execPath, [script, '--mode', 'pool-worker'], { cwd, env, input, timeout: 20000 });
    return { status: out.status, stderr: out.stderr.toString(), frames: out.status === 0 ? wire.decodeFrames(out.stdout, { codec, validate: wire.validateToPool }) : [] };
  };
  const served = (what, out) => {
    assert.equal(out.status, 0, `${what}: ${out.stderr}`);
    assert.equal(out.frames[0].type, 'hello', what);
    const reply = out.frames.find((f) => f.id === 1);
    assert.ok(reply && reply.success, `${what}: ${JSON.stringify(out.frames)}`);
    assert.ok(reply.result instanceof Uint8Array, what);
    assert.equal(Buffer.from(reply.result).toString('hex'), '0102ff', what);
  };
  // Control: without any of them the copy cannot find the package.
  const none = run(path.join(dirs.plain, 'worker.js'), dirs.nowhere);
  assert.equal(none.status, 1, none.stderr);
  assert.match(none.stderr, /@msgpack\/msgpack/);
  served('node_modules next to the script', run(path.join(dirs.beside, 'worker.js'), dirs.nowhere));
  served('node_modules in the working directory', run(path.join(dirs.plain, 'worker.js'), dirs.cwd));
  served('NODE_PATH', run(path.join(dirs.plain, 'worker.js'), dirs.nowhere, nodePath));
});

// README, Errors: "A handler that throws (or whose promise rejects) gets a
// failed reply ... The worker serves on"; a handler "returns the result (or a
// promise of it)". A thenable whose `then` throws is a rejected promise to
// `await`. (The bridge called `then` outside any try once: the exception
// escaped into the stdin 'data' listener and killed the worker, exit 1.)
test('a handler returning a thenable whose then() throws gets a failed reply', async (t) => {
  const { w } = start(t);
  await w.hello();
  w.request(1, 'thenableThrows');
  const r = await replyOrExit(w, 1);
  assert.equal(r.success, false);
  assert.equal(r.error.message, 'then threw');
  assert.deepStrictEqual(await w.call(2, 'ok'), { id: 2, success: true, result: 'ok' });
  await w.close();
});

// README, Errors: "`type` is the error's `name`, or its class name when a
// subclass of `Error` does not set one (`class ModelError extends Error {}`
// gives `ModelError`)". `class BadInput extends TypeError {}` is a subclass
// of Error that does not set a name (the reply once said `TypeError`).
test('a subclass of a built-in Error subclass that sets no name reports its class name', async (t) => {
  const { w } = start(t);
  await w.hello();
  const r = await w.call(1, 'badInput');
  assert.equal(r.success, false);
  assert.equal(r.error.type, 'BadInput');
  await w.close();
});

// docs/protocol.md section 3: JSON has no NaN or infinities; "the Node.js
// bridge writes `null` in its place, as `JSON.stringify` does" (the pool
// would take `NaN` for a broken frame).
test('NaN and infinities in a JSON result are written as null', async (t) => {
  const { w } = start(t);
  await w.hello();
  const r = await w.call(1, 'notFinite');
  assert.deepStrictEqual(r, { id: 1, success: true, result: { nan: null, inf: null } });
  await w.close();
});
