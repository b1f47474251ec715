'use strict';

// The cap on host calls waiting for their answers: the pool takes at most
// 256 host calls of one worker at once (MAX_HOST_CALLS_IN_FLIGHT in
// crates/core/src/worker/host.rs) and replaces a worker that sends more. A
// fake pool over real pipes counts the host calls it has read and not yet
// answered, from the moment each frame arrives, and fails the test if that
// count ever passes 256. Held host calls leave in the order they were made;
// one whose call is cancelled or ends while it is held is never sent; a host
// call whose wait was given up still counts until its late reply arrives;
// stdin closing fails held host calls as it fails sent ones.

const test = require('node:test');
const assert = require('node:assert/strict');

const { WorkerProcess, scriptDir } = require('./helpers');

const CAP = 256;
const WAIT_MS = 30000; // liveness only: generous on a loaded machine

const SOURCE = `
const { Worker } = require('snakepit-bridge');

const worker = new Worker({ maxConcurrency: 32 });
const settled = new Map(); // tag -> promise of what each host call got

function outcome(result) {
  return result.status === 'fulfilled'
    ? { result: result.value }
    : { type: result.reason.name, message: result.reason.message };
}

function fire(ctx, args) {
  const calls = [];
  for (let i = 0; i < args.n; i++) calls.push(ctx.callHost('echo', { tag: args.tag, i }));
  const all = Promise.allSettled(calls).then((results) => results.map(outcome));
  settled.set(args.tag, all);
  return all;
}

worker
  // n session gets at once; the answers in the order asked.
  .command('fan', (args, ctx) => {
    const gets = [];
    for (let i = 0; i < args.n; i++) gets.push(ctx.session.get(args.tag + ':' + i));
    return Promise.all(gets);
  })
  // n host calls at once; waits for all of them to settle.
  .command('hold', async (args, ctx) => {
    await fire(ctx, args);
    return 'done';
  })
  // n host calls at once; returns what each got.
  .command('report', (args, ctx) => fire(ctx, args))
  // n host calls at once; returns without waiting for them.
  .command('leave', (args, ctx) => {
    fire(ctx, args);
    return 'left';
  })
  // A host call whose frame is larger than the pool reads.
  .command('big', async (args, ctx) => {
    try {
      return { result: await ctx.callHost('echo', { blob: 'x'.repeat(args.size) }) };
    } catch (err) {
      return { type: err.name, message: err.message };
    }
  })
  .command('outcome', (args) => settled.get(args.tag));

worker.run();
`;

// A worker and the pool's count of its host calls read and not answered.
function start(t, codec) {
  const { script } = scriptDir(t, SOURCE, 'snakepit-node-cap-');
  const w = new WorkerProcess(script, { codec, env: { SNAKEPIT_MAX_FRAME_SIZE: String(1 << 20) } });
  t.after(() => w.kill());
  // open: read and not answered; seen: every one read; taken: how many
  // nextHostCall has returned.
  const pool = { w, open: [], seen: [], taken: 0, max: 0 };
  const deliver = w._deliver.bind(w);
  w._deliver = (frame) => {
    if (frame.type === 'host_call') {
      pool.open.push(frame);
      pool.seen.push(frame);
      pool.max = Math.max(pool.max, pool.open.length);
    }
    deliver(frame);
  };
  return pool;
}

function checkCount(pool) {
  assert.ok(pool.max <= CAP, `${pool.max} host calls were written without a reply; the pool takes ${CAP}`);
}

// The next host call the worker writes.
async function nextHostCall(pool) {
  const call = await pool.w.next((f) => f.type === 'host_call', WAIT_MS);
  pool.taken++;
  checkCount(pool);
  return call;
}

// Answers the oldest open host call (or the given one) with its own args.
function answer(pool, call = pool.open[0]) {
  pool.open.splice(pool.open.indexOf(call), 1);
  pool.w.send({ type: 'host_reply', id: call.id, success: true, result: { echo: call.args } });
}

// A round trip: every frame the worker wrote before it answers this ping
// has been read by then.
let pingId = 100000;
async function barrier(pool) {
  const id = pingId++;
  pool.w.request(id, 'ping');
  assert.equal((await pool.w.reply(id, WAIT_MS)).success, true);
  checkCount(pool);
}

// Takes host calls until `total` were made: waits until min(total, CAP)
// have come, then answers one at a time, each answer letting one held
// host call out, and finally answers the rest.
async function serveAll(pool, total) {
  while (pool.taken < Math.min(total, CAP)) await nextHostCall(pool);
  await barrier(pool); // room for a 257th to show up, were it sent
  assert.equal(pool.open.length, Math.min(total, CAP));
  while (pool.taken < total) {
    answer(pool);
    await nextHostCall(pool);
    assert.equal(pool.open.length, CAP, 'one answer lets exactly one held host call out');
  }
  while (pool.open.length > 0) answer(pool);
}

for (const codec of ['json', 'msgpack']) {
  test(`300 host calls at once from one handler are all answered, never more than 256 waiting (${codec})`, async (t) => {
    const pool = start(t, codec);
    await pool.w.hello();
    pool.w.request(1, 'fan', { n: 300, tag: 'k' });
    await serveAll(pool, 300);
    const reply = await pool.w.reply(1, WAIT_MS);
    assert.equal(reply.success, true, JSON.stringify(reply));
    const keys = Array.from({ length: 300 }, (_, i) => `k:${i}`);
    // Sent in the order they were made, held ones included.
    assert.deepStrictEqual(pool.seen.map((c) => c.args.key), keys);
    assert.deepStrictEqual(reply.result, keys.map((key) => ({ echo: { key } })));
    checkCount(pool);
    await pool.w.close();
  });

  test(`16 calls making 20 host calls each share the 256 places (${codec})`, async (t) => {
    const pool = start(t, codec);
    await pool.w.hello();
    for (let id = 1; id <= 16; id++) pool.w.request(id, 'fan', { n: 20, tag: `r${id}` });
    await serveAll(pool, 320);
    for (let id = 1; id <= 16; id++) {
      const reply = await pool.w.reply(id, WAIT_MS);
      assert.equal(reply.success, true, JSON.stringify(reply));
      const keys = Array.from({ length: 20 }, (_, i) => `r${id}:${i}`);
      assert.deepStrictEqual(reply.result, keys.map((key) => ({ echo: { key } })));
      // Each call's host calls left in the order it made them.
      assert.deepStrictEqual(pool.seen.filter((c) => c.request_id === id).map((c) => c.args.key), keys);
    }
    checkCount(pool);
    await pool.w.close();
  });

  for (const [how, command, expected] of [
    ['is cancelled', 'hold', /request 2 was cancelled/],
    ['ends', 'leave', /request 2 is already finished/],
  ]) {
    test(`a held host call whose call ${how} fails as Cancelled and is never sent (${codec})`, async (t) => {
      const pool = start(t, codec);
      await pool.w.hello();
      pool.w.request(1, 'hold', { n: CAP, tag: 'a' });
      for (let k = 0; k < CAP; k++) await nextHostCall(pool);
      pool.w.request(2, command, { n: 3, tag: 'b' });
      if (command === 'hold') {
        await barrier(pool);
        pool.w.send({ type: 'cancel', id: 2 });
      }
      const reply = await pool.w.reply(2, WAIT_MS);
      if (command === 'hold') assert.equal(reply.error.type, 'Cancelled', JSON.stringify(reply));
      else assert.equal(reply.result, 'left');
      const held = (await pool.w.call(3, 'outcome', { tag: 'b' })).result;
      assert.equal(held.length, 3);
      for (const o of held) {
        assert.equal(o.type, 'Cancelled', JSON.stringify(o));
        assert.match(o.message, expected);
      }
      // Places free up; the failed held calls must not take them.
      while (pool.open.length > 0) answer(pool);
      const first = await pool.w.reply(1, WAIT_MS);
      assert.equal(first.success, true, JSON.stringify(first));
      await barrier(pool);
      assert.deepStrictEqual(pool.seen.filter((c) => c.request_id !== 1), []);
      assert.equal(pool.seen.length, CAP);
      await pool.w.close();
    });
  }

  test(`a host call whose wait was given up counts until its late reply (${codec})`, async (t) => {
    const pool = start(t, codec);
    await pool.w.hello();
    pool.w.request(1, 'hold', { n: CAP, tag: 'a' });
    for (let k = 0; k < CAP; k++) await nextHostCall(pool);
    pool.w.send({ type: 'cancel', id: 1 });
    assert.equal((await pool.w.reply(1, WAIT_MS)).error.type, 'Cancelled');
    // The pool still counts the 256 until it answers them: nothing of call 2 goes out.
    pool.w.request(2, 'hold', { n: 2, tag: 'b' });
    await barrier(pool);
    assert.equal(pool.seen.length, CAP);
    // Each late reply frees one place.
    answer(pool);
    const one = await nextHostCall(pool);
    assert.equal(one.request_id, 2);
    await barrier(pool);
    assert.equal(pool.seen.length, CAP + 1);
    answer(pool);
    const two = await nextHostCall(pool);
    assert.equal(two.request_id, 2);
    answer(pool, one);
    answer(pool, two);
    assert.equal((await pool.w.reply(2, WAIT_MS)).result, 'done');
    const outcomes = (await pool.w.call(3, 'outcome', { tag: 'b' })).result;
    assert.deepStrictEqual(outcomes, [{ result: { echo: { tag: 'b', i: 0 } } }, { result: { echo: { tag: 'b', i: 1 } } }]);
    while (pool.open.length > 0) answer(pool);
    await barrier(pool);
    assert.equal(pool.seen.length, CAP + 2);
    await pool.w.close();
  });

  test(`held host calls fail as HostUnavailable when stdin closes, and are never sent (${codec})`, async (t) => {
    const pool = start(t, codec);
    await pool.w.hello();
    pool.w.request(1, 'report', { n: CAP + 4, tag: 'a' });
    for (let k = 0; k < CAP; k++) await nextHostCall(pool);
    await barrier(pool);
    pool.w.child.stdin.end();
    const reply = await pool.w.reply(1, WAIT_MS);
    assert.equal(reply.result.length, CAP + 4);
    for (const o of reply.result) assert.equal(o.type, 'HostUnavailable', JSON.stringify(o));
    assert.equal((await pool.w.exited).code, 0);
    assert.equal(pool.seen.length, CAP);
    assert.equal(pool.w.stdoutError, null);
  });

  test(`a host call too large for a frame fails at once while others are held (${codec})`, async (t) => {
    const pool = start(t, codec);
    await pool.w.hello();
    pool.w.request(1, 'hold', { n: CAP + 1, tag: 'a' });
    for (let k = 0; k < CAP; k++) await nextHostCall(pool);
    const big = (await pool.w.call(2, 'big', { size: 2 << 20 })).result;
    assert.equal(big.type, 'ResultTooLarge', JSON.stringify(big));
    await serveAll(pool, CAP + 1);
    assert.equal((await pool.w.reply(1, WAIT_MS)).result, 'done');
    assert.deepStrictEqual(pool.seen.filter((c) => c.request_id !== 1), []);
    await pool.w.close();
  });
}
