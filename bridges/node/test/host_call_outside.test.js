'use strict';

// ctx.callHost outside the handler's own flow, in a real worker process and
// both codecs: from tasks the handler starts and does not await, and for a
// worker_threads thread through the main thread, every host call gets its
// own answer while the call runs; once the call has ended, callHost (and a
// host call still waiting then) rejects with a CancelledError, nothing more
// is sent, and the worker serves on.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const { WorkerProcess } = require('./helpers');

const SCRIPT = path.join(__dirname, 'fixtures', 'host_call_outside_worker.js');

function answer(w, call, fail = false) {
  w.send(
    fail
      ? { type: 'host_reply', id: call.id, success: false, error: { type: 'Nope', message: 'refused' } }
      : { type: 'host_reply', id: call.id, success: true, result: { echo: call.args } }
  );
}

for (const codec of ['json', 'msgpack']) {
  test(`host calls from tasks and a thread's requests each get their own answer (${codec})`, async (t) => {
    const w = new WorkerProcess(SCRIPT, { codec });
    t.after(() => w.kill());
    await w.hello();
    w.request(1, 'fan_out', { n: 3 });
    const calls = [];
    for (let k = 0; k < 5; k++) calls.push(await w.next((f) => f.type === 'host_call'));
    assert.deepStrictEqual(new Set(calls.map((c) => c.request_id)), new Set([1]));
    for (const call of calls.reverse()) answer(w, call, call.args.i === 0);
    const reply = await w.reply(1);
    assert.equal(reply.success, true, JSON.stringify(reply));
    assert.deepStrictEqual(reply.result.tasks, [
      { type: 'Nope', message: 'refused' }, // a HostCallError's name is the host's type
      { result: { echo: { i: 1 } } },
      { result: { echo: { i: 2 } } },
    ]);
    assert.deepStrictEqual(reply.result.thread, { result: { echo: { i: 'thread' } } });
    assert.deepStrictEqual(reply.result.here, { result: { echo: { i: 'here' } } });
    assert.equal((await w.call(2, 'ping')).success, true);
    await w.close();
  });

  test(`callHost after the call ended rejects with CancelledError and sends nothing (${codec})`, async (t) => {
    const w = new WorkerProcess(SCRIPT, { codec });
    t.after(() => w.kill());
    await w.hello();
    assert.equal((await w.call(1, 'leave', { tag: 'a' })).result, 'left');
    assert.equal((await w.call(2, 'go', { tag: 'a' })).result, 'going');
    const outcome = (await w.call(3, 'outcome', { tag: 'a' })).result;
    assert.equal(outcome.type, 'Cancelled', JSON.stringify(outcome)); // a CancelledError's name
    assert.match(outcome.message, /request 1 is already finished/);
    assert.equal(w.frames.filter((f) => f.type === 'host_call').length, 0);
    assert.equal((await w.call(4, 'ping')).success, true);
    await w.close();
  });

  test(`callHost after the call was cancelled rejects with CancelledError (${codec})`, async (t) => {
    const w = new WorkerProcess(SCRIPT, { codec });
    t.after(() => w.kill());
    await w.hello();
    w.request(1, 'cancel_then_ask', { tag: 'c' });
    w.send({ type: 'cancel', id: 1 });
    assert.equal((await w.reply(1)).error.type, 'Cancelled');
    const outcome = (await w.call(2, 'outcome', { tag: 'c' })).result;
    assert.equal(outcome.type, 'Cancelled', JSON.stringify(outcome));
    assert.match(outcome.message, /request 1 was cancelled/);
    assert.equal(w.frames.filter((f) => f.type === 'host_call').length, 0);
    await w.close();
  });

  test(`a host call still waiting when the call ends rejects with CancelledError (${codec})`, async (t) => {
    const w = new WorkerProcess(SCRIPT, { codec });
    t.after(() => w.kill());
    await w.hello();
    w.request(1, 'leave_waiting', { tag: 'b' });
    const call = await w.next((f) => f.type === 'host_call');
    assert.equal((await w.reply(1)).result, 'left');
    const outcome = (await w.call(2, 'outcome', { tag: 'b' })).result;
    assert.equal(outcome.type, 'Cancelled', JSON.stringify(outcome)); // a CancelledError's name
    assert.match(outcome.message, /request 1 is already finished/);
    answer(w, call); // too late: dropped
    assert.equal((await w.call(3, 'ping')).success, true);
    await w.close();
  });
}
