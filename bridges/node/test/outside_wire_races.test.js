'use strict';

// Outside audit: the Node.js worker driven directly over its pipes, as a
// hostile or unlucky pool would drive it (frames split and coalesced,
// cancels before, with and after their requests, duplicate ids, host
// replies out of order, SIGINT with and without `sigint: true`, stdin
// ending mid-frame, thenables, edge ids).
//
// Invariants checked throughout: exactly one final reply per request id in
// flight, a handler never runs for a call cancelled before it started
// (handlers log their request id to a file), and the worker survives bad
// input. Nothing is timed for speed; bounds only turn hangs into failures.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const wire = require('../lib/wire');
const { WorkerProcess, scriptDir, until } = require('./helpers');

const SCRIPT = `
const fs = require('fs');
const { Worker, genericCommands } = require('snakepit-bridge');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const mark = (ctx) => fs.appendFileSync(process.env.MARK_FILE, ctx.requestId + '\\n');

const worker = new Worker({
  sigint: process.env.RACE_SIGINT === '1',
  maxConcurrency: Number(process.env.RACE_CONCURRENCY || 16),
  commands: {
    ...genericCommands(),
    async mark(args, ctx) {
      mark(ctx);
      await sleep(args.ms || 0);
      return { id: ctx.requestId };
    },
    async host(args, ctx) {
      mark(ctx);
      const out = [];
      for (let i = 0; i < (args.calls || 1); i++) out.push(await ctx.callHost('f', { i }));
      return out;
    },
    async stream(args, ctx) {
      mark(ctx);
      for (let i = 0; i < (args.n || 1000); i++) {
        ctx.sendChunk(i);
        await sleep(10);
      }
      return 'done';
    },
    // Thenables that misbehave: settle twice, settle then throw, a then
    // that throws before settling.
    thenable(args, ctx) {
      mark(ctx);
      switch (args.kind) {
        case 'twice':
          return { then(ok, bad) { ok(1); ok(2); bad(new Error('late')); } };
        case 'settle-then-throw':
          return { then(ok) { ok('fine'); throw new Error('after'); } };
        case 'throws':
          return { then() { throw new RangeError('in then'); } };
        case 'async':
          return { then(ok) { setTimeout(() => ok('later'), 20); } };
        default:
          return { then: 'not a function', v: 1 };
      }
    },
  },
});
worker.run();
`;

const TS = '2026-11-27T12:24:04.051023Z';

function haveMsgpack() {
  try {
    wire.getCodec('msgpack').encodeFrame({ a: 1 });
    return true;
  } catch (_) {
    return false;
  }
}
const CODECS = haveMsgpack() ? ['json', 'msgpack'] : ['json'];

let spawned = 0;
async function spawnWorker(t, { codec = 'json', env = {} } = {}) {
  const { dir, script } = scriptDir(t, SCRIPT, 'snakepit-node-outside-races-');
  spawned++;
  const marks = path.join(dir, `marks-${spawned}`);
  const w = new WorkerProcess(script, { codec, env: { MARK_FILE: marks, ...env } });
  t.after(() => w.kill());
  const hello = await w.hello();
  assert.equal(hello.type, 'hello');
  w.marked = () => {
    try {
      return fs.readFileSync(marks, 'utf8').split('\n').filter(Boolean).map(Number);
    } catch (_) {
      return [];
    }
  };
  w.frame = (msg) => w.codec.encodeFrame(msg);
  w.req = (id, command = 'mark', args = {}) => w.frame({ id, command, args, timestamp: TS });
  w.cancelFrame = (id) => w.frame({ type: 'cancel', id });
  return w;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const isReply = (f) => f.type === undefined || f.type === 'response';

// Every final reply received so far for `id`, waiting `ms` for late ones.
async function repliesFor(w, id, ms = 300) {
  await sleep(ms);
  const got = w.frames.filter((f) => isReply(f) && f.id === id);
  w.frames = w.frames.filter((f) => !(isReply(f) && f.id === id));
  return got;
}

// The next frame is the reply to a fresh ping: nothing stray came first.
async function assertNothingMore(w, id = 999999) {
  await sleep(100);
  const stray = w.frames.filter((f) => f.type !== 'chunk');
  assert.deepEqual(stray, [], 'no frame expected before the ping');
  const r = await w.call(id, 'ping');
  assert.equal(r.success, true, JSON.stringify(r));
}

// --- framing ---------------------------------------------------------------

// protocol.md section 2: "a 4-byte big-endian unsigned length n, then n
// bytes of payload. No newline, no other framing."
test('a request split at every byte boundary gets one reply each', async (t) => {
  for (const codec of CODECS) {
    const w = await spawnWorker(t, { codec });
    const size = w.req(1, 'echo', { k: 'v' }).length;
    for (let cut = 1; cut < size; cut++) {
      const id = cut + 1;
      const data = w.req(id, 'echo', { k: 'v' });
      w.sendRaw(data.subarray(0, cut));
      await sleep(2);
      w.sendRaw(data.subarray(cut));
      const r = await w.reply(id);
      assert.equal(r.success, true, JSON.stringify(r));
    }
    await assertNothingMore(w);
  }
});

// protocol.md section 4: "A cancel for an id that is not running (its reply
// has been sent) is ignored. So is a cancel whose id is missing or not an
// integer"; every request gets exactly one reply.
test('hundreds of frames coalesced in one write with stray cancels', async (t) => {
  for (const codec of CODECS) {
    const w = await spawnWorker(t, { codec });
    const parts = [];
    for (let id = 1; id <= 300; id++) {
      parts.push(w.req(id, 'echo', { n: id }), w.cancelFrame(id + 100000), w.frame({ type: 'cancel', id: 'x' }));
    }
    w.sendRaw(Buffer.concat(parts));
    for (let id = 1; id <= 300; id++) assert.equal((await w.reply(id)).success, true);
    await assertNothingMore(w);
  }
});

// --- cancels -----------------------------------------------------------------

// protocol.md section 4 (cancel): "A cancel for an id that is not running
// ... is ignored"; one before its request names nothing running.
test('a cancel written before its request is ignored and the request runs', async (t) => {
  for (const codec of CODECS) {
    const w = await spawnWorker(t, { codec });
    w.sendRaw(Buffer.concat([w.cancelFrame(2), w.req(2)]));
    const r = await w.reply(2);
    assert.equal(r.success, true, JSON.stringify(r));
    assert.deepEqual(w.marked(), [2]);
    assert.deepEqual(await repliesFor(w, 2), []);
    await assertNothingMore(w);
  }
});

// README "Concurrency and cancellation": the bridge "replies Cancelled at
// once, even if the handler ignores the signal; whatever the handler returns
// later is dropped"; a call waiting for a slot never runs once cancelled.
test('a cancel with its request in one write, and one for a call waiting for a slot', async (t) => {
  for (const codec of CODECS) {
    const w = await spawnWorker(t, { codec, env: { RACE_CONCURRENCY: '1' } });
    w.sendRaw(Buffer.concat([w.req(1, 'mark', { ms: 300 }), w.req(2), w.cancelFrame(2), w.req(3)]));
    const r2 = await w.reply(2);
    assert.equal(r2.error.type, 'Cancelled', JSON.stringify(r2));
    assert.equal((await w.reply(1)).success, true);
    assert.equal((await w.reply(3)).success, true);
    w.sendRaw(Buffer.concat([w.req(4, 'mark', { ms: 200 }), w.cancelFrame(4)]));
    assert.equal((await w.reply(4)).error.type, 'Cancelled');
    // The handler of 4 started (it was running) and its late result is dropped.
    for (const id of [1, 2, 3, 4]) assert.deepEqual(await repliesFor(w, id, id === 4 ? 400 : 0), []);
    assert.deepEqual(w.marked(), [1, 3, 4]);
    await assertNothingMore(w);
  }
});

// protocol.md section 4: "A cancel for an id that is not running (its reply
// has been sent) is ignored. So is a cancel whose id is missing or not an
// integer"; ids past 2^53 - 1 name nothing the Node bridge runs.
test('a cancel after the reply and for edge ids is ignored', async (t) => {
  for (const codec of CODECS) {
    const w = await spawnWorker(t, { codec });
    assert.equal((await w.call(1, 'mark')).success, true);
    for (const id of [1, 0, -1, 2 ** 53, Number.MAX_SAFE_INTEGER, 1.5, null, [1], '1']) {
      w.send(id === null ? { type: 'cancel' } : { type: 'cancel', id });
    }
    await assertNothingMore(w);
    assert.deepEqual(w.marked(), [1]);
  }
});

// protocol.md section 4: "A request whose id is already running on this
// worker: the worker may drop it with a line on stderr; it must not start a
// second handler under the same id while the first runs"; after the reply
// the id may be used again.
test('a well-formed duplicate of a running id is dropped; the id is free after its reply', async (t) => {
  const w = await spawnWorker(t);
  w.sendRaw(Buffer.concat([w.req(5, 'mark', { ms: 300 }), w.req(5), w.req(5)]));
  const got = await repliesFor(w, 5, 800);
  assert.equal(got.length, 1, JSON.stringify(got));
  assert.deepEqual(w.marked(), [5]);
  assert.match(w.stderr, /already running/);
  assert.equal((await w.call(5, 'mark')).success, true);
  assert.deepEqual(w.marked(), [5, 5]);
  await assertNothingMore(w);
});

// protocol.md section 5 (cancel): the worker "must still send exactly one
// final response for the id"; section 4: a request under a running id "the
// worker may drop ...; it must not start a second handler under the same id
// while the first runs".
test('a malformed request under a running id gets no second final reply for that id', async (t) => {
  const w = await spawnWorker(t);
  w.request(1, 'mark', { ms: 300 });
  await until(() => w.marked().includes(1), 'call 1 started');
  // Same id, a command that is not a string / args that are not a map.
  w.send({ id: 1, command: 5, args: {} });
  w.send({ id: 1, command: 'mark', args: [1] });
  const got = await repliesFor(w, 1, 800);
  assert.equal(got.length, 1, `final replies for id 1: ${JSON.stringify(got)}`);
  assert.equal(got[0].success, true);
});

// --- thenables ---------------------------------------------------------------

// bridges.md: a handler "returns the result or a promise of it"; one final
// reply whatever a thenable does.
test('thenables that settle twice, throw, or are not thenables get one reply each', async (t) => {
  const w = await spawnWorker(t);
  const cases = [
    ['twice', true, 1],
    ['settle-then-throw', true, 'fine'],
    ['throws', false, 'RangeError'],
    ['async', true, 'later'],
    ['plain', true, { then: 'not a function', v: 1 }],
  ];
  let id = 0;
  for (const [kind, ok, value] of cases) {
    id++;
    const r = await w.call(id, 'thenable', { kind });
    assert.equal(r.success, ok, JSON.stringify(r));
    if (ok) assert.deepEqual(r.result, value);
    else assert.equal(r.error.type, value);
    assert.deepEqual(await repliesFor(w, id, 100), [], kind);
  }
  await assertNothingMore(w);
});

// --- host calls ----------------------------------------------------------------

// protocol.md section 4: "A host_reply whose id is not that of the host call
// being waited for is ignored: a host call never made, one already
// answered, or an id that is not an integer".
test('host replies unknown, duplicated and out of order are ignored', async (t) => {
  for (const codec of CODECS) {
    const w = await spawnWorker(t, { codec });
    w.request(1, 'host', { calls: 2 });
    const hc1 = await w.next((f) => f.type === 'host_call');
    const junk = [hc1.id + 1, 0, 2 ** 53 + 2, '1', 1.5].map((id) =>
      w.frame({ type: 'host_reply', id, success: true, result: 'junk' })
    );
    w.sendRaw(Buffer.concat(junk));
    w.send({ type: 'host_reply', id: hc1.id, success: true, result: 'a' });
    const hc2 = await w.next((f) => f.type === 'host_call');
    assert.notEqual(hc2.id, hc1.id);
    w.send({ type: 'host_reply', id: hc1.id, success: true, result: 'dup' });
    w.send({ type: 'host_reply', id: hc2.id, success: true, result: 'b' });
    const r = await w.reply(1);
    assert.deepEqual(r.result, ['a', 'b'], JSON.stringify(r));
    w.send({ type: 'host_reply', id: hc2.id, success: true, result: 'late' });
    await assertNothingMore(w);
  }
});

// Two calls waiting on host calls answered in the opposite order each get
// their own answer (host call ids are the worker's own counter).
test('host calls of two calls answered in reverse order', async (t) => {
  const w = await spawnWorker(t);
  w.request(1, 'host');
  w.request(2, 'host');
  const a = await w.next((f) => f.type === 'host_call');
  const b = await w.next((f) => f.type === 'host_call');
  w.send({ type: 'host_reply', id: b.id, success: true, result: `for ${b.request_id}` });
  w.send({ type: 'host_reply', id: a.id, success: true, result: `for ${a.request_id}` });
  assert.deepEqual((await w.reply(1)).result, ['for 1']);
  assert.deepEqual((await w.reply(2)).result, ['for 2']);
  await assertNothingMore(w);
});

// protocol.md section 6: "The pool closes the worker's stdin: the worker
// finishes what it is doing and exits 0 on EOF"; README: host calls fail
// once stdin is closed.
test('stdin ending inside a frame during a host call: one reply, exit 0', async (t) => {
  const w = await spawnWorker(t);
  w.request(1, 'host');
  await w.next((f) => f.type === 'host_call');
  w.sendRaw(Buffer.from('\x00\x00\x00\x40{"type":"host_re', 'latin1'));
  const exit = await w.close();
  assert.deepEqual(exit, { code: 0, signal: null }, w.stderr);
  const r = await w.reply(1);
  assert.equal(r.success, false);
  assert.equal(r.error.type, 'HostUnavailable', JSON.stringify(r));
  assert.deepEqual(await repliesFor(w, 1, 50), []);
});

// --- SIGINT --------------------------------------------------------------------

// README: "by default the bridge declares sigint: false ... and ignores
// SIGINT, so a stray Ctrl-C never kills a worker".
test('without sigint, SIGINT at any phase changes nothing', async (t) => {
  const w = await spawnWorker(t);
  w.child.kill('SIGINT');
  await sleep(100);
  w.request(1, 'mark', { ms: 300 });
  await until(() => w.marked().includes(1), 'call 1 started');
  w.child.kill('SIGINT');
  const data = w.req(2);
  w.sendRaw(data.subarray(0, 5));
  w.child.kill('SIGINT');
  await sleep(50);
  w.sendRaw(data.subarray(5));
  assert.equal((await w.reply(1)).success, true);
  assert.equal((await w.reply(2)).success, true);
  assert.equal(w.child.exitCode, null);
  await assertNothingMore(w);
});

// README: "With new Worker({ sigint: true }), SIGINT cancels the calls
// running at that moment as a cancel frame would; between calls it is
// ignored".
test('with sigint: a SIGINT while idle or mid-frame is ignored; one during calls cancels them once', async (t) => {
  const w = await spawnWorker(t, { env: { RACE_SIGINT: '1' } });
  w.child.kill('SIGINT');
  await sleep(100);
  const data = w.req(1);
  w.sendRaw(data.subarray(0, 5));
  await sleep(50);
  w.child.kill('SIGINT');
  await sleep(100);
  w.sendRaw(data.subarray(5));
  assert.equal((await w.reply(1)).success, true);
  // Two running calls (one a host call, one a stream), then SIGINT.
  w.request(2, 'host');
  w.request(3, 'stream', { n: 1000 }, { stream: true });
  const hc = await w.next((f) => f.type === 'host_call');
  await w.next((f) => f.type === 'chunk' && f.id === 3);
  await sleep(50);
  w.child.kill('SIGINT');
  assert.equal((await w.reply(2)).error.type, 'Cancelled');
  assert.equal((await w.reply(3)).error.type, 'Cancelled');
  await sleep(100);
  w.frames = w.frames.filter((f) => f.type !== 'chunk');
  // No chunk of 3 after its reply, the late host reply is ignored.
  w.send({ type: 'host_reply', id: hc.id, success: true, result: 1 });
  await sleep(100);
  assert.deepEqual(w.frames.filter((f) => f.type === 'chunk'), []);
  for (const id of [2, 3]) assert.deepEqual(await repliesFor(w, id, 0), []);
  assert.deepEqual(w.marked(), [1, 2, 3]);
  await assertNothingMore(w);
});

// README: with sigint, "a signal read in the same turn of the event loop as
// the request of the call it would cancel" is ignored "(it may have come
// first)". The worker is stopped, the request and SIGINT are both queued,
// then it is continued: it reads both in one turn, and the call runs. (The
// kernel may hand the signal to one of Node's other threads a moment late,
// so that it is read a turn later and cancels the call, as documented: a
// few attempts, one of which must leave the call alone; without the
// same-turn rule every attempt is cancelled.)
test('with sigint: a SIGINT read in the same turn as its request leaves that call alone', async (t) => {
  const w = await spawnWorker(t, { env: { RACE_SIGINT: '1' } });
  assert.equal((await w.call(1, 'mark')).success, true);
  const outcomes = [];
  for (let id = 2; id <= 5 && !outcomes.includes(true); id++) {
    await sleep(50);
    w.child.kill('SIGSTOP');
    await sleep(50);
    w.request(id, 'mark', { ms: 300 });
    await sleep(50);
    w.child.kill('SIGINT');
    await sleep(50);
    w.child.kill('SIGCONT');
    const r = await w.reply(id);
    if (!r.success) assert.equal(r.error.type, 'Cancelled', JSON.stringify(r));
    outcomes.push(r.success);
    await sleep(350); // a cancelled call's handler ends
  }
  assert.ok(outcomes.includes(true), `every attempt was cancelled: ${outcomes}`);
  assert.deepEqual(w.marked(), [1, ...outcomes.map((_, i) => i + 2)]);
  await assertNothingMore(w);
});

// One final reply per request whatever SIGINTs land (sigint: true).
test('with sigint: a storm of SIGINTs across many calls keeps one reply each', async (t) => {
  const w = await spawnWorker(t, { env: { RACE_SIGINT: '1' } });
  const parts = [];
  for (let id = 1; id <= 100; id++) parts.push(w.req(id, 'mark', { ms: 5 }));
  w.sendRaw(Buffer.concat(parts));
  const deadline = Date.now() + 2000;
  while (Date.now() < deadline && w.marked().length < 100) {
    w.child.kill('SIGINT');
    await sleep(3);
  }
  for (let id = 1; id <= 100; id++) {
    const r = await w.reply(id);
    if (!r.success) assert.equal(r.error.type, 'Cancelled', JSON.stringify(r));
  }
  for (let id = 1; id <= 100; id++) assert.deepEqual(await repliesFor(w, id, id === 1 ? 200 : 0), []);
  await assertNothingMore(w);
});

// --- end of input, signals -------------------------------------------------------

// protocol.md section 4: "The stream ends inside a frame ...: the worker
// treats it as the end of stdin ... and exits 0; it sends nothing";
// bridges.md: "worker.run() exits with 0 once stdin is closed and the
// running calls have replied".
test('stdin ending inside a frame while calls run', async (t) => {
  for (const cut of [2, 9]) {
    const w = await spawnWorker(t);
    w.sendRaw(Buffer.concat([w.req(1, 'mark', { ms: 300 }), w.req(2), w.req(3).subarray(0, cut)]));
    const exit = await w.close();
    assert.deepEqual(exit, { code: 0, signal: null }, w.stderr);
    assert.equal((await w.reply(1)).success, true);
    assert.equal((await w.reply(2)).success, true);
    assert.deepEqual(w.frames, []);
    assert.deepEqual(w.marked().sort(), [1, 2]);
  }
});

// bridges.md: "SIGTERM exits with 0".
test('SIGTERM at each phase exits 0', async (t) => {
  for (const phase of ['idle', 'handler', 'host call', 'mid-frame']) {
    const w = await spawnWorker(t);
    if (phase === 'handler') {
      w.request(1, 'mark', { ms: 5000 });
      await until(() => w.marked().includes(1), 'call 1 started');
    } else if (phase === 'host call') {
      w.request(1, 'host');
      await w.next((f) => f.type === 'host_call');
    } else if (phase === 'mid-frame') {
      w.sendRaw(w.req(1).subarray(0, 6));
      await sleep(100);
    }
    w.child.kill('SIGTERM');
    assert.deepEqual(await w.exited, { code: 0, signal: null }, w.stderr);
  }
});

// --- hostile payloads ----------------------------------------------------------

function rawFrame(payload) {
  const b = Buffer.alloc(4 + payload.length);
  b.writeUInt32BE(payload.length, 0);
  payload.copy(b, 4);
  return b;
}

// protocol.md section 4: a length of 0, invalid UTF-8, a payload that does
// not decode or is not a map: "Reply a failed response with id 0 and error
// type ProtocolError" and keep serving; "an id past 2^53 - 1 ... is refused
// (InvalidRequest under id 0) rather than answered under another id".
test('bad frames and edge ids are answered with id 0 and the worker serves on', async (t) => {
  const w = await spawnWorker(t);
  const bad = [
    Buffer.alloc(0),
    Buffer.concat([Buffer.from('{"id":1,"command":"echo","args":{"s":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}}')]),
    Buffer.from('[1,2]'),
    Buffer.from('{"id":1,"command":"echo","args":{}'),
  ];
  w.sendRaw(Buffer.concat(bad.map(rawFrame)));
  for (let i = 0; i < bad.length; i++) {
    const r = await w.next(isReply);
    assert.deepEqual([r.id, r.success, r.error.type], [0, false, 'ProtocolError'], JSON.stringify(r));
  }
  for (const id of ['0', '9007199254740992', '18446744073709551615']) {
    w.sendRaw(rawFrame(Buffer.from(`{"id":${id},"command":"echo","args":{}}`)));
    const r = await w.next(isReply);
    assert.deepEqual([r.id, r.error.type], [0, 'InvalidRequest'], JSON.stringify(r));
  }
  const r = await w.call(Number.MAX_SAFE_INTEGER, 'echo', { x: 1 });
  assert.equal(r.success, true, JSON.stringify(r));
  await assertNothingMore(w);
});

// protocol.md section 4: "a length above the worker's limit (64 MiB, the
// pool's default max_frame_size)" is unusable, so one of exactly 64 MiB is a
// frame; one byte more is a ProtocolError, skipped in step, also when it
// arrives while a call runs, followed by a request and its cancel.
test('a frame of exactly 64 MiB is read and one byte more is skipped in step', async (t) => {
  const limit = 64 * 1024 * 1024;
  const w = await spawnWorker(t);
  const head = Buffer.from('{"id":1,"command":"no_such_command","args":{"pad":"');
  const tail = Buffer.from('"}}');
  const payload = Buffer.concat([head, Buffer.alloc(limit - head.length - tail.length, 0x78), tail]);
  assert.equal(payload.length, limit);
  w.sendRaw(rawFrame(payload));
  const r1 = await w.reply(1, 60000);
  assert.equal(r1.error.type, 'UnknownCommand', JSON.stringify(r1).slice(0, 300));
  w.request(2, 'mark', { ms: 300 });
  await until(() => w.marked().includes(2), 'call 2 started');
  const header = Buffer.alloc(4);
  header.writeUInt32BE(limit + 1, 0);
  w.sendRaw(Buffer.concat([header, Buffer.alloc(4096, 0x7b)]));
  w.sendRaw(Buffer.alloc(limit + 1 - 4096, 0x7b));
  w.sendRaw(Buffer.concat([w.req(3, 'mark', { ms: 300 }), w.cancelFrame(3), w.req(4)]));
  const r0 = await w.reply(0, 60000);
  assert.equal(r0.error.type, 'ProtocolError');
  assert.equal((await w.reply(2, 60000)).success, true);
  assert.equal((await w.reply(3, 60000)).error.type, 'Cancelled');
  assert.equal((await w.reply(4, 60000)).success, true);
  await assertNothingMore(w);
});

// protocol.md section 2: "A payload nests at most 127 arrays and maps";
// bridges survive deeper input: a frame nested 100,000 levels gets one
// reply (a failed one) and the worker serves on, in both codecs.
test('a frame nested 100,000 levels deep gets one failed reply and the worker serves on', async (t) => {
  for (const codec of CODECS) {
    const w = await spawnWorker(t, { codec });
    let payload;
    if (codec === 'json') {
      payload = Buffer.from(`{"id":1,"command":"echo","args":{"a":${'['.repeat(100000)}${']'.repeat(100000)}}}`);
    } else {
      // {"id":1,"command":"echo","args":{"a":[[[...nil...]]]}}
      payload = Buffer.concat([
        Buffer.from([0x83, 0xa2]), Buffer.from('id'), Buffer.from([0x01, 0xa7]), Buffer.from('command'),
        Buffer.from([0xa4]), Buffer.from('echo'), Buffer.from([0xa4]), Buffer.from('args'),
        Buffer.from([0x81, 0xa1]), Buffer.from('a'), Buffer.alloc(100000, 0x91), Buffer.from([0xc0]),
      ]);
    }
    w.sendRaw(rawFrame(payload));
    const r = await w.next(isReply, 20000);
    assert.equal(r.success, false, JSON.stringify(r).slice(0, 300));
    assert.ok(r.id === 0 || r.id === 1, JSON.stringify(r).slice(0, 300));
    await assertNothingMore(w);
  }
});
