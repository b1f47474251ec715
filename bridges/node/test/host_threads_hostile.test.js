'use strict';

// ctx.callHost from a handler's own async work (tasks, timers, immediates it
// does not await), driven as a hostile pool would: many tasks at once, a task
// calling just as its handler returns (many times over, with the next calls
// written ahead), a host call left waiting, a task of an ended call calling
// during the next call, a cancel frame while a task waits, stdin closing
// under a waiting task, and host_reply frames for no host call. Every call
// gets its own reply, no host call leaves for an ended call, and the worker
// serves on.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const wire = require('../lib/wire');
const { WorkerProcess } = require('./helpers');

const SCRIPT = path.join(__dirname, 'fixtures', 'hostile_threads_worker.js');
const TIMEOUT = 30000;

const echo = (call) => ({ type: 'host_reply', id: call.id, success: true, result: { echo: call.args } });
const req = (id, command, args = {}) => ({ id, command, args, timestamp: '2026-11-27T12:24:04.051023Z' });
const isReply = (f) => f.type === undefined || f.type === 'response';

// A fake pool: reads the worker's frames in order, answers its host calls,
// and checks that no host call names a request already answered.
class Pool {
  constructor(w) {
    this.w = w;
    this.answered = new Set();
    this.hostCalls = [];
  }

  async recv(timeoutMs = TIMEOUT) {
    const msg = await this.w.next(() => true, timeoutMs);
    if (msg.type === 'host_call') {
      assert.ok(!this.answered.has(msg.request_id), `host call ${JSON.stringify(msg)} after its request's reply`);
      this.hostCalls.push(msg);
    } else if (isReply(msg)) {
      assert.ok(!this.answered.has(msg.id), `two replies for ${msg.id}`);
      this.answered.add(msg.id);
    }
    return msg;
  }

  // Reads until every request in `ids` is answered, answering host calls as
  // they come; a Map id -> reply.
  async replies(ids) {
    const got = new Map();
    while (ids.some((id) => !got.has(id))) {
      const msg = await this.recv();
      if (msg.type === 'host_call') this.w.send(echo(msg));
      else if (isReply(msg)) {
        assert.ok(ids.includes(msg.id), `unexpected reply ${JSON.stringify(msg)}`);
        got.set(msg.id, msg);
      }
    }
    return got;
  }

  async call(id, command, args = {}) {
    this.w.send(req(id, command, args));
    return (await this.replies([id])).get(id);
  }

  async hostCall() {
    const msg = await this.recv();
    assert.equal(msg.type, 'host_call', JSON.stringify(msg));
    return msg;
  }

  raw(frames) {
    this.w.sendRaw(Buffer.concat(frames.map((f) => this.w.codec.encodeFrame(f))));
  }
}

async function start(t, codec, concurrency = 4) {
  const w = new WorkerProcess(SCRIPT, { codec, env: { HOSTILE_CONCURRENCY: String(concurrency) } });
  t.after(() => w.kill());
  await w.hello();
  return [w, new Pool(w)];
}

function assertFinished(outcome, id) {
  assert.equal(outcome.type, 'Cancelled', JSON.stringify(outcome));
  assert.match(outcome.message, new RegExp(`request ${id} is already finished`));
}

async function report(pool, id) {
  const reply = await pool.call(id, 'report');
  assert.equal(reply.success, true, JSON.stringify(reply));
  return reply.result.outcomes;
}

function haveMsgpack() {
  try {
    wire.getCodec('msgpack').encodeFrame({ a: 1 });
    return true;
  } catch (_) {
    return false;
  }
}

for (const codec of haveMsgpack() ? ['json', 'msgpack'] : ['json']) {
  test(`a swarm of tasks gets each its own reply in any order (${codec})`, async (t) => {
    const [w, pool] = await start(t, codec);
    const n = 16;
    const k = 6;
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (const id of [1, 2]) {
      w.send(req(id, 'swarm', { n, k }));
      let reply = null;
      let waiting = [];
      while (reply === null) {
        let msg = null;
        try {
          msg = await pool.recv(waiting.length ? 300 : TIMEOUT);
        } catch (err) {
          if (!/no matching frame/.test(err.message)) throw err;
        }
        if (msg && msg.type === 'host_call') {
          assert.equal(msg.request_id, id);
          waiting.push(msg);
          if (waiting.length < n + 1) continue;
        } else if (msg) {
          reply = msg;
          continue;
        }
        // Every caller waits (or the stream paused): all answered, shuffled,
        // in one write.
        waiting.sort(() => rand() - 0.5);
        pool.raw(waiting.map(echo));
        waiting = [];
      }
      assert.equal(reply.success, true, JSON.stringify(reply));
      const want = Array.from({ length: n + 1 }, (_, i) =>
        Array.from({ length: k }, (_, j) => ({ result: { echo: { i, j, rid: id } } }))
      );
      assert.deepStrictEqual(reply.result, want);
    }
    assert.equal(pool.hostCalls.length, 2 * (n + 1) * k);
    assert.equal(new Set(pool.hostCalls.map((c) => c.id)).size, pool.hostCalls.length);
    await w.close();
  });

  for (const concurrency of [1, 4]) {
    test(`a task calling as its handler returns never leaks (${codec}, concurrency ${concurrency})`, async (t) => {
      const [w, pool] = await start(t, codec, concurrency);
      let next = 1;
      for (const [count, batch] of [[1500, 50], [500, 1]]) {
        for (let from = next; from < next + count; from += batch) {
          const ids = [];
          for (let i = from; i < Math.min(from + batch, next + count); i++) ids.push(i);
          pool.raw(ids.map((i) => req(i, 'race_return', { tag: String(i) })));
          const got = await pool.replies(ids);
          for (const i of ids) assert.equal(got.get(i).result, String(i), JSON.stringify(got.get(i)));
        }
        next += count;
      }
      const outcomes = await report(pool, next);
      const sent = new Map(pool.hostCalls.map((c) => [c.args.tag, c]));
      for (let i = 1; i < next; i++) {
        const outcome = outcomes[String(i)];
        assert.ok(outcome, `no outcome for ${i}`);
        if ('result' in outcome) {
          assert.deepStrictEqual(outcome.result, { echo: { tag: String(i) } });
          assert.equal(sent.get(String(i)).request_id, i);
        } else {
          assertFinished(outcome, i);
        }
      }
      // Both ways happen: some tasks call in time (their host call goes out
      // before the reply, and then fails), some too late (nothing is sent).
      assert.ok(sent.size > 0 && sent.size < next - 1, `${sent.size} of ${next - 1} host calls sent`);
      assert.equal((await pool.call(next + 1, 'ping')).success, true);
      await w.close();
    });
  }

  test(`a host call waiting when the handler returns fails, and the next calls are served (${codec})`, async (t) => {
    const [w, pool] = await start(t, codec, 1);
    const ids = Array.from({ length: 20 }, (_, n) => 10 * (n + 1));
    for (const id of ids) {
      w.send(req(id, 'hold_then_return', { tag: String(id) }));
      const held = [];
      for (;;) {
        const msg = await pool.recv();
        if (msg.type === 'host_call') held.push(msg);
        if (isReply(msg) && msg.id === id) break;
      }
      pool.raw([...held.map(echo), req(id + 1, 'mark'), req(id + 2, 'mark'), { type: 'cancel', id: id + 2 },
        req(id + 3, 'mark')]);
      const got = await pool.replies([id + 1, id + 2, id + 3]);
      assert.equal(got.get(id + 1).result, id + 1);
      assert.equal(got.get(id + 3).result, id + 3);
    }
    const outcomes = await report(pool, 999);
    for (const id of ids) assertFinished(outcomes[String(id)], id);
    await w.close();
  });

  test(`a task of an ended call is refused during the next call (${codec})`, async (t) => {
    const [w, pool] = await start(t, codec);
    const ids = Array.from({ length: 10 }, (_, n) => 10 * (n + 1));
    for (const id of ids) {
      const tag = `stale${id}`;
      assert.equal((await pool.call(id, 'leave_for_next', { tag })).result, tag);
      const reply = await pool.call(id + 1, 'open_and_call', { tag });
      assert.deepStrictEqual(reply.result, {
        here: { result: { echo: { here: id + 1 } } },
        thread: { result: { echo: { fresh: id + 1 } } },
      });
    }
    const outcomes = await report(pool, 999);
    for (const id of ids) assertFinished(outcomes[`stale${id}`], id);
    assert.deepStrictEqual([...new Set(pool.hostCalls.map((c) => c.request_id))].sort((a, b) => a - b),
      ids.map((id) => id + 1));
    await w.close();
  });

  test(`host replies for no host call while a task waits are dropped (${codec})`, async (t) => {
    const [w, pool] = await start(t, codec);
    w.send(req(1, 'ask_and_wait', { tag: 't1' }));
    const call = await pool.hostCall();
    pool.raw([
      { type: 'host_reply', id: call.id + 1000, success: true, result: 'wrong' },
      { type: 'host_reply', id: 0, success: true, result: 'wrong' },
      { type: 'host_reply', id: -call.id, success: false, error: { type: 'X', message: 'wrong' } },
      echo(call),
    ]);
    const reply = (await pool.replies([1])).get(1);
    assert.deepStrictEqual(reply.result, { joined: { result: { echo: { tag: 't1' } } } });
    assert.equal((await pool.call(2, 'ping')).success, true);
    await w.close();
  });

  test(`a cancel frame while a task waits fails its host call, and the worker serves on (${codec})`, async (t) => {
    const [w, pool] = await start(t, codec);
    for (const id of [10, 20, 30]) {
      w.send(req(id, 'ask_and_wait', { tag: String(id) }));
      const call = await pool.hostCall();
      w.send({ type: 'cancel', id });
      const reply = (await pool.replies([id])).get(id);
      assert.equal(reply.error.type, 'Cancelled', JSON.stringify(reply));
      w.send(echo(call)); // late: dropped
      assert.equal((await pool.call(id + 1, 'mark')).result, id + 1);
    }
    const outcomes = await report(pool, 999);
    for (const id of [10, 20, 30]) {
      assert.equal(outcomes[String(id)].type, 'Cancelled');
      assert.match(outcomes[String(id)].message, new RegExp(`request ${id} was cancelled`));
    }
    await w.close();
  });

  test(`stdin closing while a task waits fails its host call (${codec})`, async (t) => {
    const [w, pool] = await start(t, codec);
    w.send(req(1, 'ask_and_wait', { tag: 't1' }));
    await pool.hostCall();
    w.child.stdin.end();
    const reply = (await pool.replies([1])).get(1);
    assert.match(reply.result.joined.message, /stdin/, JSON.stringify(reply));
    const { code } = await w.exited;
    assert.equal(code, 0, w.stderr);
  });

  test(`calls written ahead while a task waits run in order (${codec})`, async (t) => {
    const [w, pool] = await start(t, codec, 1);
    w.send(req(1, 'ask_and_wait', { tag: 't1' }));
    const call = await pool.hostCall();
    pool.raw([req(2, 'mark'), req(3, 'mark'), { type: 'cancel', id: 3 }, req(4, 'mark'), req(5, 'mark'), echo(call)]);
    const got = await pool.replies([1, 2, 3, 4, 5]);
    assert.deepStrictEqual(got.get(1).result, { joined: { result: { echo: { tag: 't1' } } } });
    assert.equal(got.get(3).error.type, 'Cancelled');
    assert.deepStrictEqual((await pool.call(6, 'order')).result, [2, 4, 5]);
    await w.close();
  });
}
