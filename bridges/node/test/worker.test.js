'use strict';

// The serve loop driven in-process through a PassThrough, frame by frame.

const test = require('node:test');
const assert = require('node:assert/strict');
const { PassThrough } = require('node:stream');
const { setTimeout: sleep } = require('node:timers/promises');

const wire = require('../lib/wire');
const { Worker, CancelledError, HostCallError, genericCommands } = require('../lib');

class Harness {
  constructor(options = {}, codecName = 'json') {
    this.worker = new Worker({ codec: codecName, ...options });
    this.codec = wire.getCodec(codecName);
    this.input = new PassThrough();
    this.frames = [];
    this.waiters = [];
    const reader = new wire.FrameReader({
      onFrame: (payload) => this._deliver(wire.validateToPool(this.codec.decodePayload(payload))),
      onError: (err) => {
        throw err;
      },
    });
    this.done = this.worker.serve({ input: this.input, write: (frame) => reader.push(Buffer.from(frame)) });
  }

  _deliver(frame) {
    const i = this.waiters.findIndex((w) => w.match(frame));
    if (i === -1) this.frames.push(frame);
    else this.waiters.splice(i, 1)[0].resolve(frame);
  }

  next(match = () => true) {
    const i = this.frames.findIndex(match);
    if (i !== -1) return Promise.resolve(this.frames.splice(i, 1)[0]);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }

  reply(id) {
    return this.next((f) => (f.type === undefined || f.type === 'response') && f.id === id);
  }

  send(message) {
    this.input.write(this.codec.encodeFrame(message));
  }

  call(id, command, args = {}, extra = {}) {
    this.send({ id, command, args, timestamp: '2026-11-27T12:24:04.051023Z', ...extra });
    return this.reply(id);
  }

  async close() {
    this.input.end();
    await this.done;
  }
}

test('hello comes first and declares the capabilities', async () => {
  const h = new Harness({ maxConcurrency: 3 });
  const hello = h.frames[0];
  assert.equal(hello.type, 'hello');
  assert.equal(hello.protocol, 1);
  assert.equal(hello.pid, process.pid);
  assert.match(hello.bridge, /^snakepit-node\/\d+\.\d+\.\d+$/);
  assert.equal(hello.runtime, `Node.js ${process.versions.node}`);
  assert.deepStrictEqual(hello.capabilities, { max_concurrency: 3, cancel: true, sigint: false, streaming: true, host_calls: true });
  assert.deepStrictEqual(Object.keys(hello), ['type', 'protocol', 'pid', 'bridge', 'runtime', 'capabilities']);
  await h.close();
});

test('SNAKEPIT_MAX_CONCURRENCY wins over the option; the default is 16', () => {
  process.env.SNAKEPIT_MAX_CONCURRENCY = '5';
  try {
    assert.equal(new Worker({ maxConcurrency: 2 }).maxConcurrency, 5);
  } finally {
    delete process.env.SNAKEPIT_MAX_CONCURRENCY;
  }
  assert.equal(new Worker().maxConcurrency, 16);
  assert.equal(new Worker({ maxConcurrency: 2 }).maxConcurrency, 2);
});

test('maxConcurrency above 2^32-1 is declared as 2^32-1; a bad one is a RangeError', () => {
  process.env.SNAKEPIT_MAX_CONCURRENCY = '99999999999';
  try {
    assert.equal(new Worker().maxConcurrency, 4294967295);
  } finally {
    delete process.env.SNAKEPIT_MAX_CONCURRENCY;
  }
  assert.equal(new Worker({ maxConcurrency: Infinity }).maxConcurrency, 4294967295);
  for (const bad of [0, -1, 2.5, NaN, -Infinity, false, '3']) {
    assert.throws(() => new Worker({ maxConcurrency: bad }), RangeError, String(bad));
  }
});

test('the codec comes from the option, else SNAKEPIT_CODEC, else json', () => {
  process.env.SNAKEPIT_CODEC = 'msgpack';
  try {
    assert.equal(new Worker().codec.name, 'msgpack');
    assert.equal(new Worker({ codec: 'json' }).codec.name, 'json');
  } finally {
    delete process.env.SNAKEPIT_CODEC;
  }
  assert.equal(new Worker().codec.name, 'json');
});

test('sync and async handlers reply; undefined becomes null; key order id, success, result', async () => {
  const h = new Harness({
    commands: {
      add: (args) => args.a + args.b,
      later: async (args) => {
        await sleep(5);
        return { got: args };
      },
      nothing: () => undefined,
    },
  });
  assert.deepStrictEqual(await h.call(1, 'add', { a: 2, b: 3 }), { id: 1, success: true, result: 5 });
  assert.deepStrictEqual(await h.call(2, 'later', { x: 1 }), { id: 2, success: true, result: { got: { x: 1 } } });
  assert.deepStrictEqual(await h.call(3, 'nothing'), { id: 3, success: true, result: null });
  await h.close();
});

test('command() registers, chains and refuses non-functions', () => {
  const w = new Worker();
  assert.equal(w.command('a', () => 1).command('b', () => 2), w);
  assert.deepStrictEqual(w.commandNames(), ['ping', 'a', 'b']); // ping is built in
  assert.throws(() => w.command('c', 42), TypeError);
});

test('unknown commands, bad requests and garbage frames get failed replies and serving goes on', async () => {
  const h = new Harness({ commands: { ok: () => 'ok' } });
  assert.deepStrictEqual(await h.call(1, 'frobnicate'), {
    id: 1,
    success: false,
    error: { type: 'UnknownCommand', message: 'Unknown command: frobnicate' },
  });
  h.send({ command: 'ok', args: {} });
  let r = await h.reply(0);
  assert.equal(r.error.type, 'InvalidRequest');
  h.send({ id: 4, args: {} });
  r = await h.reply(4);
  assert.equal(r.error.type, 'InvalidRequest');
  assert.match(r.error.message, /command/);
  h.send({ id: 5, command: 'ok', args: [1, 2] });
  assert.equal((await h.reply(5)).error.type, 'InvalidRequest');
  h.send({ id: 'x', command: 'ok', args: {} });
  assert.equal((await h.reply(0)).error.type, 'InvalidRequest');
  h.input.write(Buffer.from('00000005', 'hex'));
  h.input.write(Buffer.from('{{{{{'));
  r = await h.reply(0);
  assert.deepStrictEqual(r, { id: 0, success: false, error: { type: 'ProtocolError', message: 'frame is not valid JSON' } });
  // A frame type the worker does not know: ProtocolError under id 0 (docs/protocol.md).
  h.send({ type: 'gossip', id: 9 });
  assert.equal((await h.reply(0)).error.type, 'ProtocolError');
  // A request without args is taken as empty args, as the original did.
  h.send({ id: 6, command: 'ok' });
  assert.deepStrictEqual(await h.reply(6), { id: 6, success: true, result: 'ok' });
  await h.close();
});

test('an oversized frame gets a ProtocolError and the next frame is served', async () => {
  const h = new Harness({ commands: { ok: () => 'ok' }, maxFrameSize: 150 });
  const big = Buffer.alloc(4 + 200, 0x20);
  big.writeUInt32BE(200, 0);
  h.input.write(big);
  const r = await h.reply(0);
  assert.equal(r.error.type, 'ProtocolError');
  assert.match(r.error.message, /200 bytes/);
  assert.deepStrictEqual(await h.call(2, 'ok'), { id: 2, success: true, result: 'ok' });
  await h.close();
});

test('a thrown error becomes {type, message, traceback}; class names and thrown strings too', async () => {
  class ModelError extends Error {}
  class NamedError extends Error {
    constructor(m) {
      super(m);
      this.name = 'CustomName';
    }
  }
  const h = new Harness({
    commands: {
      model: () => {
        throw new ModelError('model exploded');
      },
      named: async () => {
        throw new NamedError('named');
      },
      range: () => {
        throw new RangeError('out of range');
      },
      str: () => {
        throw 'just a string';
      },
    },
  });
  let r = await h.call(1, 'model');
  assert.equal(r.success, false);
  assert.equal(r.error.type, 'ModelError');
  assert.equal(r.error.message, 'model exploded');
  assert.match(r.error.traceback, /ModelError|model exploded/);
  assert.match(r.error.traceback, /worker\.test\.js/);
  assert.equal((await h.call(2, 'named')).error.type, 'CustomName');
  assert.equal((await h.call(3, 'range')).error.type, 'RangeError');
  r = await h.call(4, 'str');
  assert.deepStrictEqual(r.error, { type: 'Error', message: 'just a string' });
  await h.close();
});

test('a result that cannot be encoded still gets exactly one failed reply', async () => {
  const h = new Harness({
    commands: {
      cyclic: () => {
        const o = {};
        o.self = o;
        return o;
      },
      ok: () => 1,
    },
  });
  const r = await h.call(1, 'cyclic');
  assert.equal(r.error.type, 'EncodeError');
  assert.deepStrictEqual(await h.call(2, 'ok'), { id: 2, success: true, result: 1 });
  await h.close();
});

test('ctx carries the request fields, the worker id and a logger', async () => {
  const h = new Harness({
    commands: {
      ...genericCommands(),
      ctx: (args, ctx) => ({
        requestId: ctx.requestId,
        request_id: ctx.request_id,
        sessionId: ctx.sessionId,
        workerId: ctx.workerId,
        worker_id: ctx.worker_id,
        traceparent: ctx.traceparent,
        timeoutMs: ctx.timeoutMs,
        streamRequested: ctx.streamRequested,
        cancelled: ctx.cancelled,
        hasLog: typeof ctx.log.info === 'function',
      }),
    },
  });
  let r = await h.call(1, 'ctx');
  assert.deepStrictEqual(r.result, {
    requestId: 1, request_id: 1, sessionId: null, workerId: null, worker_id: null,
    traceparent: null, timeoutMs: null, streamRequested: false, cancelled: false, hasLog: true,
  });
  const init = await h.call(2, 'ping', { initialization: true, worker_id: 'pool_worker_1_210' });
  assert.equal(init.result.status, 'ok');
  assert.equal(init.result.worker_id, 'pool_worker_1_210');
  const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
  r = await h.call(3, 'ctx', {}, { session_id: 'user_123', traceparent: tp, timeout_ms: 30000, stream: true });
  assert.equal(r.result.sessionId, 'user_123');
  assert.equal(r.result.workerId, 'pool_worker_1_210');
  assert.equal(r.result.traceparent, tp);
  assert.equal(r.result.timeoutMs, 30000);
  assert.equal(r.result.streamRequested, true);
  await h.close();
});

test('optional request fields of the wrong type read as null; timeout_ms is an integer >= 0', async () => {
  const h = new Harness({
    commands: {
      ctx: (args, ctx) => [ctx.sessionId, ctx.traceparent, ctx.tracestate, ctx.baggage, ctx.timeoutMs],
    },
  });
  let r = await h.call(1, 'ctx', {}, { session_id: 5, traceparent: true, tracestate: {}, baggage: ['k=v'], timeout_ms: '100' });
  assert.deepStrictEqual(r.result, [null, null, null, null, null]);
  let id = 2;
  for (const timeout of [1.5, -0.5, 1e300, -5, 2 ** 53, true]) {
    r = await h.call(id++, 'ctx', {}, { timeout_ms: timeout });
    assert.equal(r.result[4], null, `timeout_ms ${timeout}`);
  }
  for (const timeout of [0, 1500, 2 ** 53 - 1]) {
    r = await h.call(id++, 'ctx', {}, { timeout_ms: timeout });
    assert.equal(r.result[4], timeout);
  }
  await h.close();
});

test('chunks go out in order before the reply, only when a stream was asked for', async () => {
  const h = new Harness({
    commands: {
      tokens: async (args, ctx) => {
        const sent = [];
        for (const token of ['Par', 'is', '!']) {
          sent.push(ctx.sendChunk({ token }));
          await sleep(1);
        }
        return { sent };
      },
    },
  });
  h.send({ id: 7, command: 'tokens', args: {}, stream: true });
  const chunks = [];
  for (let i = 0; i < 3; i++) chunks.push(await h.next((f) => f.type === 'chunk'));
  assert.deepStrictEqual(chunks, [
    { type: 'chunk', id: 7, data: { token: 'Par' } },
    { type: 'chunk', id: 7, data: { token: 'is' } },
    { type: 'chunk', id: 7, data: { token: '!' } },
  ]);
  assert.deepStrictEqual((await h.reply(7)).result, { sent: [true, true, true] });
  const r = await h.call(8, 'tokens');
  assert.deepStrictEqual(r.result, { sent: [false, false, false] });
  assert.equal(h.frames.filter((f) => f.type === 'chunk').length, 0);
  await h.close();
});

test('host calls: results, failures, session helpers, own id counter', async () => {
  const h = new Harness({
    commands: {
      remember: async (args, ctx) => {
        await ctx.session.set('model', args.model);
        const value = await ctx.session.get('model');
        const existed = await ctx.session.delete('model');
        return { value, existed };
      },
      nope: async (args, ctx) => {
        try {
          await ctx.callHost('nope', { a: 1 });
        } catch (err) {
          return { isHostError: err instanceof HostCallError, type: err.type, name: err.name, message: err.message };
        }
        return 'no error?';
      },
      escape: (args, ctx) => ctx.call_host('nope'),
    },
  });
  const store = new Map();
  h.send({ id: 20, command: 'remember', args: { model: 'gpt' }, session_id: 's1' });
  const seenIds = [];
  for (let i = 0; i < 3; i++) {
    const call = await h.next((f) => f.type === 'host_call');
    seenIds.push(call.id);
    assert.equal(call.request_id, 20);
    assert.deepStrictEqual(Object.keys(call), ['type', 'id', 'request_id', 'function', 'args']);
    let result = null;
    if (call.function === 'session.set') store.set(call.args.key, call.args.value);
    else if (call.function === 'session.get') result = store.has(call.args.key) ? store.get(call.args.key) : null;
    else if (call.function === 'session.delete') result = store.delete(call.args.key);
    h.send({ type: 'host_reply', id: call.id, success: true, result });
  }
  assert.deepStrictEqual(seenIds, [1, 2, 3]);
  assert.deepStrictEqual((await h.reply(20)).result, { value: 'gpt', existed: true });

  h.send({ id: 21, command: 'nope', args: {} });
  let call = await h.next((f) => f.type === 'host_call');
  assert.deepStrictEqual(call, { type: 'host_call', id: 4, request_id: 21, function: 'nope', args: { a: 1 } });
  h.send({ type: 'host_reply', id: 4, success: false, error: { type: 'UnknownFunction', message: 'no host function named nope' } });
  assert.deepStrictEqual((await h.reply(21)).result, {
    isHostError: true, type: 'UnknownFunction', name: 'UnknownFunction', message: 'no host function named nope',
  });

  h.send({ id: 22, command: 'escape', args: {} });
  call = await h.next((f) => f.type === 'host_call');
  assert.deepStrictEqual(call.args, {});
  h.send({ type: 'host_reply', id: call.id, success: false, error: 'plain string error' });
  const r = await h.reply(22);
  assert.deepStrictEqual([r.error.type, r.error.message], ['HostError', 'plain string error']);
  // A reply nobody waits for is dropped (logged once, then counted).
  h.send({ type: 'host_reply', id: 999, success: true, result: 1 });
  await h.close();
});

test('a host_reply without success: true fails the host call, with HostError and a message where it gives none', async () => {
  const h = new Harness({
    commands: {
      ask: async (args, ctx) => {
        try {
          return { ok: await ctx.callHost('f') };
        } catch (err) {
          return { type: err.type, message: err.message };
        }
      },
    },
  });
  const cases = [
    [{}, { type: 'HostError', message: 'host call failed' }],
    [{ success: 'yes', result: 'r' }, { type: 'HostError', message: 'host call failed' }],
    [{ success: false }, { type: 'HostError', message: 'host call failed' }],
    [{ success: false, error: null }, { type: 'HostError', message: 'host call failed' }],
    [{ success: false, error: { message: 'm' } }, { type: 'HostError', message: 'm' }],
    [{ success: false, error: { type: 'T' } }, { type: 'T', message: 'host call failed' }],
    [{ success: false, error: { type: 'T', message: 5 } }, { type: 'T', message: '5' }],
    [{ success: true }, { ok: null }],
  ];
  let id = 1;
  for (const [fields, expected] of cases) {
    h.send({ id, command: 'ask', args: {} });
    const call = await h.next((f) => f.type === 'host_call');
    h.send({ type: 'host_reply', id: call.id, ...fields });
    assert.deepStrictEqual((await h.reply(id)).result, expected, JSON.stringify(fields));
    id += 1;
  }
  await h.close();
});

test('cancel: the reply is Cancelled at once, the signal fires, a late result is dropped', async () => {
  let signalFired = false;
  let stubbornFinished = null;
  const h = new Harness({
    commands: {
      polite: async (args, ctx) => {
        ctx.signal.addEventListener('abort', () => {
          signalFired = true;
        });
        await sleep(10000, undefined, { signal: ctx.signal });
        return 'too late';
      },
      stubborn: (args, ctx) =>
        new Promise((resolve) => {
          stubbornFinished = () => resolve({ cancelled: ctx.cancelled });
        }),
      waiting: async (args, ctx) => {
        try {
          await ctx.callHost('slow.host', {});
        } catch (err) {
          if (!(err instanceof CancelledError)) throw err;
        }
        ctx.throwIfCancelled();
        return 'not cancelled?';
      },
      ok: () => 'ok',
    },
  });
  h.send({ id: 1, command: 'polite', args: {} });
  await sleep(10);
  h.send({ type: 'cancel', id: 1 });
  assert.deepStrictEqual(await h.reply(1), {
    id: 1, success: false, error: { type: 'Cancelled', message: 'request 1 was cancelled' },
  });
  assert.equal(signalFired, true);

  h.send({ id: 2, command: 'stubborn', args: {} });
  await sleep(5);
  h.send({ type: 'cancel', id: 2 });
  assert.equal((await h.reply(2)).error.type, 'Cancelled');
  stubbornFinished();
  await sleep(5);

  h.send({ id: 3, command: 'waiting', args: {} });
  const call = await h.next((f) => f.type === 'host_call');
  h.send({ type: 'cancel', id: 3 });
  assert.equal((await h.reply(3)).error.type, 'Cancelled');
  h.send({ type: 'host_reply', id: call.id, success: true, result: 1 }); // late: dropped

  // Cancelling something finished or unknown does nothing.
  h.send({ type: 'cancel', id: 42 });
  assert.deepStrictEqual(await h.call(4, 'ok'), { id: 4, success: true, result: 'ok' });
  await h.close();
  assert.equal(h.frames.filter((f) => f.id === 2).length, 0, 'the stubborn handler answered twice');
});

test('at most maxConcurrency handlers run; the rest wait, and can be cancelled while waiting', async () => {
  let running = 0;
  let peak = 0;
  const release = [];
  const h = new Harness({
    maxConcurrency: 2,
    commands: {
      hold: async (args) => {
        running++;
        peak = Math.max(peak, running);
        await new Promise((resolve) => release.push(resolve));
        running--;
        return args.n;
      },
    },
  });
  for (let n = 1; n <= 4; n++) h.send({ id: n, command: 'hold', args: { n } });
  await sleep(10);
  assert.equal(running, 2);
  h.send({ type: 'cancel', id: 3 });
  assert.equal((await h.reply(3)).error.type, 'Cancelled');
  release.shift()();
  assert.equal((await h.reply(1)).result, 1);
  await sleep(5);
  assert.equal(running, 2); // 2 and 4 now
  release.shift()();
  release.shift()();
  assert.equal((await h.reply(2)).result, 2);
  assert.equal((await h.reply(4)).result, 4);
  assert.equal(peak, 2);
  await h.close();
});

test('many concurrent async calls all get their own reply', async () => {
  const h = new Harness({
    commands: {
      delay: async (args) => {
        await sleep(args.ms);
        return args.ms;
      },
    },
  });
  const replies = [];
  for (let id = 1; id <= 40; id++) {
    replies.push(h.call(id, 'delay', { ms: (id * 7) % 13 }));
  }
  const got = await Promise.all(replies);
  got.forEach((r, i) => assert.equal(r.result, ((i + 1) * 7) % 13));
  await h.close();
});

test('EOF: serve() resolves after in-flight calls reply; pending host calls fail', async () => {
  let finished = false;
  const h = new Harness({
    commands: {
      slow: async () => {
        await sleep(30);
        finished = true;
        return 'done';
      },
      host: async (args, ctx) => {
        try {
          await ctx.callHost('never.answered');
          return 'answered?';
        } catch (err) {
          return err.type;
        }
      },
    },
  });
  h.send({ id: 1, command: 'slow', args: {} });
  h.send({ id: 2, command: 'host', args: {} });
  await h.next((f) => f.type === 'host_call');
  await h.close();
  assert.equal(finished, true);
  assert.equal((await h.reply(1)).result, 'done');
  assert.equal((await h.reply(2)).result, 'HostUnavailable');
});

test('msgpack: binary in, binary out', async () => {
  const h = new Harness({ commands: { reverse: (args) => Buffer.from(args.data).reverse() } }, 'msgpack');
  const r = await h.call(1, 'reverse', { data: Buffer.from([1, 2, 3]) });
  assert.deepStrictEqual(Buffer.from(r.result), Buffer.from([3, 2, 1]));
  await h.close();
});

test('host calls nobody awaits never crash the worker; unencodable results and args fail cleanly', async () => {
  const h = new Harness({
    commands: {
      fireAndForget: (args, ctx) => {
        ctx.callHost('ignored.1');
        ctx.session.set('k', 1);
        return 'returned at once';
      },
      badArgs: async (args, ctx) => {
        try {
          await ctx.callHost('x', { big: 10n });
        } catch (err) {
          return `rejected: ${err.name}`;
        }
        return 'sent?';
      },
      fn: () => ({ f: Symbol('no') }),
    },
  }, 'msgpack');
  assert.equal((await h.call(1, 'fireAndForget')).result, 'returned at once');
  await sleep(10); // the orphaned host calls have been rejected by now
  const r = await h.call(2, 'fn');
  assert.equal(r.error.type, 'EncodeError');
  await h.close();
  const j = new Harness({ commands: { badArgs: async (args, ctx) => {
    try {
      await ctx.callHost('x', { big: 10n });
    } catch (err) {
      return `rejected: ${err.name}`;
    }
    return 'sent?';
  } } });
  assert.equal((await j.call(3, 'badArgs')).result, 'rejected: TypeError');
  assert.equal(j.frames.filter((f) => f.type === 'host_call').length, 0);
  await j.close();
});

test('every worker answers the pool\'s init ping, and a ping of its own replaces it', async () => {
  const h = new Harness({ commands: { ok: () => 'ok' } });
  const r = await h.call(1, 'ping', { initialization: true, worker_id: 'w1' });
  assert.equal(r.success, true);
  assert.equal(r.result.status, 'ok');
  const w = new Worker({ commands: { ping: () => ({ status: 'ok', mine: true }) } });
  assert.deepStrictEqual(w.commandNames(), ['ping']);
});

test('replies to requests read together leave in one write', async () => {
  const worker = new Worker({ codec: 'json', commands: genericCommands() });
  const codec = wire.getCodec('json');
  const input = new PassThrough();
  const writes = [];
  const done = worker.serve({ input, write: (frame) => writes.push(Buffer.from(frame)) });
  assert.equal(writes.length, 1, 'the hello, written at once');
  const before = writes.length;
  const requests = [1, 2, 3, 4, 5].map((id) =>
    codec.encodeFrame({ id, command: 'echo', args: { n: id }, timestamp: '2026-11-27T12:24:04.051023Z' })
  );
  input.write(Buffer.concat(requests)); // one chunk, as one read brings them
  input.end();
  await done;
  const replies = [];
  const reader = new wire.FrameReader({
    onFrame: (payload) => replies.push(codec.decodePayload(payload)),
    onError: (err) => {
      throw err;
    },
  });
  for (const w of writes) reader.push(w);
  assert.deepEqual(
    replies.filter((r) => r.type === undefined).map((r) => [r.id, r.result.echoed.n]),
    [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]
  );
  assert.equal(writes.length - before, 1, `${writes.length - before} writes for five replies`);
});
