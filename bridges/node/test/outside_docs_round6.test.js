'use strict';

// Round 6 (second wave) of the outside review: docs/bridges.md as a promise
// for the Node.js bridge, checked on a real worker process over pipes.
//
// - "Concurrency and cancellation", Node.js row: a `cancel` frame makes
//   "`ctx.signal` fire, `ctx.cancelled` turn true, pending host calls
//   reject"; "The Node bridge sends [the `Cancelled` reply] at once and drops
//   whatever the handler returns later"; with `sigint: true` "a SIGINT sent
//   by anyone else cancels the calls running".
// - "Host functions and the session store": once the call was cancelled
//   the ctx's host calls fail at once with `CancelledError` saying
//   `request N was cancelled`, "and nothing reaches the host".
// - "The context, side by side": `ctx.sendChunk` returns `false` and sends
//   nothing once the call was cancelled; `ctx.throwIfCancelled()` throws
//   `CancelledError`; `ctx.log.info(...)` (`debug`, `warn`, `error`) log to
//   stderr.

const test = require('node:test');
const assert = require('node:assert/strict');

const { WorkerProcess, scriptDir, until } = require('./helpers');

// Liveness only: generous, for a loaded machine.
const LONG = 30000;

const SCRIPT = `
const { Worker, CancelledError } = require('snakepit-bridge');

const worker = new Worker({
  sigint: process.env.R6_SIGINT === '1',
  commands: {
    async pending(args, ctx) {
      // A host call still waiting when the cancel comes.
      let pending;
      try {
        await ctx.callHost('slow', {});
        pending = 'answered';
      } catch (err) {
        pending = { cls: err instanceof CancelledError ? 'CancelledError' : err.constructor.name, message: err.message };
      }
      const after = { pending, aborted: ctx.signal.aborted, cancelled: ctx.cancelled, chunk: ctx.sendChunk('late') };
      try {
        ctx.throwIfCancelled();
        after.thrown = null;
      } catch (err) {
        after.thrown = { cls: err instanceof CancelledError ? 'CancelledError' : err.constructor.name, message: err.message };
      }
      try {
        await ctx.callHost('after', {});
        after.later = 'answered';
      } catch (err) {
        after.later = { cls: err instanceof CancelledError ? 'CancelledError' : err.constructor.name, message: err.message };
      }
      console.error('AFTER ' + JSON.stringify(after));
      return 'a result nobody gets';
    },
    async sleeper(args, ctx) {
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
      return 'woken';
    },
    logs(args, ctx) {
      ctx.log.debug('debug line');
      ctx.log.info('info line');
      ctx.log.warn('warn line');
      ctx.log.error('error line');
      return 'logged';
    },
  },
});
worker.run();
`;

function start(t, env = {}, codec = 'json') {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-bdoc-r6-');
  const w = new WorkerProcess(script, { env, codec });
  t.after(() => w.kill());
  return w;
}

function afterLine(w) {
  const line = w.stderr.split('\n').find((l) => l.startsWith('AFTER '));
  return line === undefined ? undefined : JSON.parse(line.slice('AFTER '.length));
}

for (const codec of ['json', 'msgpack']) {
  test(`${codec}: a cancel answers Cancelled at once, fails the host calls and drops the late result`, async (t) => {
    const w = start(t, {}, codec);
    await w.hello();
    w.request(3, 'pending', {}, { stream: true });
    const call = await w.next((f) => f.type === 'host_call' && f.request_id === 3, LONG);
    assert.equal(call.function, 'slow');
    w.send({ type: 'cancel', id: 3 });
    const reply = await w.reply(3, LONG);
    assert.equal(reply.success, false);
    assert.equal(reply.error.type, 'Cancelled', JSON.stringify(reply));
    await until(() => afterLine(w) !== undefined, 'the handler reports');
    assert.deepEqual(afterLine(w), {
      pending: { cls: 'CancelledError', message: 'request 3 was cancelled' },
      aborted: true,
      cancelled: true,
      chunk: false,
      thrown: { cls: 'CancelledError', message: 'request 3 was cancelled' },
      later: { cls: 'CancelledError', message: 'request 3 was cancelled' },
    });
    // The host's late answer changes nothing; a ping is answered, and no frame
    // for request 3 came after its reply: no chunk, no second reply, no host
    // call for 'after'.
    w.send({ type: 'host_reply', id: call.id, success: true, result: 1 });
    assert.equal((await w.call(4, 'ping', {})).success, true);
    const { code } = await w.close();
    assert.equal(code, 0);
    assert.deepEqual(
      w.frames.filter((f) => f.id === 3 || f.request_id === 3),
      [],
      'frames for request 3 after its reply',
    );
  });
}

test('with sigint: true a SIGINT from anyone cancels every running call; the worker serves on', async (t) => {
  const w = start(t, { R6_SIGINT: '1' });
  const hello = await w.hello();
  assert.equal(hello.capabilities.sigint, true);
  assert.equal(hello.capabilities.cancel, true);
  w.request(1, 'sleeper');
  w.request(2, 'sleeper');
  // Both handlers run once a ping sent after them is answered (one thread,
  // requests taken in order).
  assert.equal((await w.call(3, 'ping', {})).success, true);
  w.child.kill('SIGINT');
  for (const id of [1, 2]) {
    const reply = await w.reply(id, LONG);
    assert.equal(reply.error && reply.error.type, 'Cancelled', JSON.stringify(reply));
  }
  assert.equal((await w.call(4, 'logs', {})).result, 'logged');
  assert.equal((await w.close()).code, 0);
});

test('ctx.log writes its four levels to stderr, with the request id, and nothing to the frames', async (t) => {
  const w = start(t);
  await w.hello();
  assert.equal((await w.call(9, 'logs', {})).result, 'logged');
  assert.equal((await w.close()).code, 0);
  for (const [level, text] of [['DEBUG', 'debug line'], ['INFO', 'info line'], ['WARN', 'warn line'], ['ERROR', 'error line']]) {
    const line = w.stderr.split('\n').find((l) => l.includes(text));
    assert.ok(line, `${text} not on stderr:\n${w.stderr}`);
    assert.match(line, new RegExp(`req=9\\].*${level}`));
  }
  assert.deepEqual(w.frames, [], 'no stray frame');
});
