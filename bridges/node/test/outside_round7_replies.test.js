'use strict';

// Outside review, round 7: host_replies that no host call waits for. A
// broken or hostile host can send them without end; the worker logged a
// line for each one. README, Host calls: they are "logged as a WARN with a
// count, not one line each: the first one, then one line at the 10th,
// 100th, 1000th and so on, each with the count so far", each line quoting
// the id "briefly (at most a few hundred characters, however long the
// id)"; such a reply "frees no place"; and the late answer to a host call
// whose wait was given up is "dropped without a log line" (Node's rule,
// kept). Real worker processes in both codecs; time bounds only turn hangs
// into failures.

const test = require('node:test');
const assert = require('node:assert/strict');

const wire = require('../lib/wire');
const { WorkerProcess, scriptDir } = require('./helpers');

const WAIT_MS = 30000; // generous: a loaded 2-core machine
const CAP = 256; // the pool's limit on host calls waiting at once

function haveMsgpack() {
  try {
    wire.getCodec('msgpack').encodeFrame({ a: 1 });
    return true;
  } catch (_) {
    return false;
  }
}
const CODECS = haveMsgpack() ? ['json', 'msgpack'] : ['json'];

const SOURCE = `
const { Worker } = require('snakepit-bridge');

const worker = new Worker({ maxConcurrency: 4 });
const settled = new Map(); // tag -> promise of what the host calls got

worker
  // One host call; returns its answer.
  .command('ask', (args, ctx) => ctx.callHost('echo', args))
  // One host call; returns without waiting for it (its wait is given up).
  .command('leave', (args, ctx) => {
    ctx.callHost('echo', args).catch(() => {});
    return 'left';
  })
  // n host calls at once; waits for all of them to settle.
  .command('hold', async (args, ctx) => {
    const calls = [];
    for (let i = 0; i < args.n; i++) calls.push(ctx.callHost('echo', { i }));
    const all = Promise.allSettled(calls).then((rs) => rs.map((r) => r.status === 'fulfilled' ? r.value : r.reason.name));
    settled.set(args.tag, all);
    await all;
    return 'done';
  })
  .command('outcome', (args) => settled.get(args.tag));

worker.run();
`;

const BIG = 's'.repeat(1000000);

function start(t, codec) {
  const { script } = scriptDir(t, SOURCE, 'snakepit-node-replies-');
  const w = new WorkerProcess(script, { codec });
  // Every byte of its stderr has been read once 'close' fires.
  w.closed = new Promise((resolve) => w.child.on('close', resolve));
  t.after(() => w.kill());
  return w;
}

function call(w, id, command, args = {}) {
  w.request(id, command, args);
  return w.reply(id, WAIT_MS);
}

function hostReply(id, result = null) {
  return { type: 'host_reply', id, success: true, result };
}

// 1000 host_replies for no host call, `first` first: integer ids, then ids
// of every other kind, a bin under MessagePack, and last a 1 MB string.
function strayReplies(w, codec, first) {
  const others = [2.5, -1, 0, null, true, 'x', { a: 1 }, [1, 2],
    codec === 'msgpack' ? new Uint8Array([1, 2, 3]) : 'y'];
  const ids = [];
  for (let id = first; ids.length < 1000 - others.length - 2; id++) ids.push(id);
  ids.push(...others);
  for (const id of ids) w.send(hostReply(id));
  w.send({ type: 'host_reply', success: true, result: null }); // no id at all
  w.send(hostReply(BIG));
  return ids.length + 2;
}

// The worker's stderr lines about host_replies (only dropped ones are
// logged), whatever their wording.
function droppedLines(w) {
  return w.stderr.split('\n').filter((line) => /\bhost_repl(y|ies)\b/.test(line));
}

// Closes stdin; the worker exits 0, and its whole stderr has been read.
async function finish(w) {
  const { code } = await w.close();
  assert.equal(code, 0, w.stderr.slice(-2000));
  await w.closed;
}

function assertCounted(w, firstShown) {
  const lines = droppedLines(w);
  assert.equal(lines.length, 4,
    `one line at the 1st, 10th, 100th and 1000th, not one each:\n${lines.slice(0, 12).map((l) => l.slice(0, 300)).join('\n')}`);
  assert.ok(lines[0].includes(`WARN host_reply ${firstShown} matches no waiting host call; dropped`), lines[0]);
  ['10', '100', '1000'].forEach((count, i) => {
    assert.match(lines[i + 1], new RegExp(`WARN ${count} host_replies matching no waiting host call dropped so far`));
  });
  // The 1000th was the 1 MB id: quoted briefly, with its length.
  assert.match(lines[3], /the last: "s{199}\.\.\. \(1000002 characters\)\)$/);
  for (const line of lines) assert.ok(line.length < 1000, `a line quotes the id briefly: ${line.length} characters`);
}

for (const codec of CODECS) {
  test(`1000 host_replies for no host call between calls give four short lines, and the worker serves (${codec})`, async (t) => {
    const w = start(t, codec);
    await w.hello();
    assert.equal(strayReplies(w, codec, 1), 1000);
    assert.equal((await call(w, 1, 'ping')).success, true);
    // Host call 1 is made after the stray reply with id 1 was dropped: it
    // waits for its own answer.
    w.request(2, 'ask', { n: 2 });
    const host = await w.next((f) => f.type === 'host_call', WAIT_MS);
    assert.equal(host.id, 1);
    w.send(hostReply(host.id, { echoed: host.args }));
    const reply = await w.reply(2, WAIT_MS);
    assert.deepStrictEqual([reply.success, reply.result], [true, { echoed: { n: 2 } }]);
    await finish(w);
    assertCounted(w, '1');
  });

  test(`1000 host_replies for no host call while one waits give four short lines, and its answer gets through (${codec})`, async (t) => {
    const w = start(t, codec);
    await w.hello();
    w.request(1, 'ask', { n: 1 });
    const host = await w.next((f) => f.type === 'host_call', WAIT_MS);
    strayReplies(w, codec, host.id + 1000);
    w.send(hostReply(host.id, { echoed: host.args }));
    const reply = await w.reply(1, WAIT_MS);
    assert.deepStrictEqual([reply.success, reply.result], [true, { echoed: { n: 1 } }]);
    assert.equal((await call(w, 2, 'ping')).success, true);
    await finish(w);
    assertCounted(w, String(host.id + 1000));
  });

  // Node's rule, kept: the late answer to a host call whose wait was given
  // up frees its place silently. A second answer to it is a stray.
  test(`the late reply of a given-up host call is dropped without a line; a second one is a stray (${codec})`, async (t) => {
    const w = start(t, codec);
    await w.hello();
    w.request(1, 'leave', { n: 1 });
    const host = await w.next((f) => f.type === 'host_call', WAIT_MS);
    assert.equal((await w.reply(1, WAIT_MS)).result, 'left');
    w.send(hostReply(host.id, 'late'));
    assert.equal((await call(w, 2, 'ping')).success, true);
    w.send(hostReply(host.id, 'again'));
    assert.equal((await call(w, 3, 'ping')).success, true);
    await finish(w);
    const lines = droppedLines(w);
    assert.equal(lines.length, 1, lines.join('\n'));
    assert.ok(lines[0].includes(`WARN host_reply ${host.id} matches no waiting host call; dropped`), lines[0]);
  });

  // README: "an id of a host call still held in the bridge" is a stray,
  // and "frees no place": the held call stays held, and later gets its own
  // answer, not the stray one.
  test(`a host_reply for a held host call frees no place and is a stray (${codec})`, async (t) => {
    const w = start(t, codec);
    await w.hello();
    w.request(1, 'hold', { n: CAP + 1, tag: 'a' });
    const sent = [];
    while (sent.length < CAP) sent.push(await w.next((f) => f.type === 'host_call', WAIT_MS));
    const held = Math.max(...sent.map((c) => c.id)) + 1;
    w.send(hostReply(held, 'stray'));
    // Every frame written before the ping's reply has been read by then.
    assert.equal((await call(w, 2, 'ping')).success, true);
    assert.equal(w.frames.filter((f) => f.type === 'host_call').length, 0, 'the held host call stays held');
    for (const c of sent) w.send(hostReply(c.id, c.args.i));
    const last = await w.next((f) => f.type === 'host_call', WAIT_MS);
    assert.deepStrictEqual([last.id, last.args], [held, { i: CAP }]);
    w.send(hostReply(last.id, CAP));
    assert.equal((await w.reply(1, WAIT_MS)).result, 'done');
    const outcome = (await call(w, 3, 'outcome', { tag: 'a' })).result;
    assert.deepStrictEqual(outcome, Array.from({ length: CAP + 1 }, (_, i) => i));
    await finish(w);
    const lines = droppedLines(w);
    assert.equal(lines.length, 1, lines.join('\n'));
    assert.ok(lines[0].includes(`WARN host_reply ${held} matches no waiting host call; dropped`), lines[0]);
  });
}
