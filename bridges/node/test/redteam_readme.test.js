'use strict';

// Red-team checks of README.md's promises that the other suites leave out:
// edge cases and frames from the pool side a worker meets in the field,
// against real worker processes over pipes (and serve() in-process where
// the README promises something of serve() itself).

const test = require('node:test');
const assert = require('node:assert/strict');
const { PassThrough } = require('node:stream');

const wire = require('../lib/wire');
const { WorkerProcess, scriptDir } = require('./helpers');

const SCRIPT = `
const { Worker } = require('snakepit-bridge');
const worker = new Worker({
  commands: {
    echo(args) {
      return args;
    },
    protoOf(args) {
      // What a handler sees of a key named __proto__: an own property.
      const doc = args.doc;
      return {
        own: Object.prototype.hasOwnProperty.call(doc, '__proto__'),
        plainPrototype: Object.getPrototypeOf(doc) === Object.prototype,
        polluted: ({}).polluted === undefined ? null : ({}).polluted,
      };
    },
    async waitThenChunk(args, ctx) {
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
      // README: sendChunk "returns whether it was" written; after the
      // cancel the call is answered, so nothing more goes out.
      const sent = ctx.sendChunk({ after: 'cancel' });
      process.stderr.write('waitThenChunk: sendChunk after cancel -> ' + sent + '\\n');
      return 'late';
    },
  },
});
worker.run();
`;

function start(t, options) {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-node-redteam-');
  const w = new WorkerProcess(script, options);
  t.after(() => w.kill());
  return w;
}

// A JSON text whose map has an own key "__proto__", as JSON.parse makes it
// (an object literal or an assignment would set the prototype instead).
const PROTO_DOC = '{"doc":{"__proto__":{"polluted":1},"a":1}}';

// README, "Codecs": JSON or MessagePack, "must match the pool"; both carry the
// same maps. A map key "__proto__" is data like any other (a JSON document
// a worker processes may hold one): under JSON the handler gets it as an own
// property and nothing is polluted. Under MessagePack it must be the same.
test('JSON: a map key __proto__ is an own property of args and pollutes nothing', async (t) => {
  const w = start(t, { codec: 'json' });
  await w.hello();
  w.request(1, 'protoOf', JSON.parse(PROTO_DOC));
  const r = await w.reply(1);
  assert.deepStrictEqual(r.result, { own: true, plainPrototype: true, polluted: null }, JSON.stringify(r));
  w.request(2, 'echo', JSON.parse(PROTO_DOC));
  assert.deepStrictEqual(JSON.stringify((await w.reply(2)).result), PROTO_DOC);
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
});

test('MessagePack: a request whose args hold a map key __proto__ is served as under JSON',
  async (t) => {
    const w = start(t, { codec: 'msgpack' });
    await w.hello();
    w.request(1, 'protoOf', JSON.parse(PROTO_DOC));
    const r = await w.next((f) => f.type === undefined && (f.id === 1 || f.id === 0));
    assert.equal(r.id, 1, JSON.stringify(r));
    assert.deepStrictEqual(r.result, { own: true, plainPrototype: true, polluted: null }, JSON.stringify(r));
    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  });

// docs/bridges.md, the context table: sendChunk "returns `false` and sends
// nothing ... once the call was answered or cancelled". docs/protocol.md:
// chunks come "before its final response, never after it" (the pool replaces
// a worker that sends one after). A handler that chunks after its cancel.
test('a chunk sent after the call was cancelled is not written and sendChunk says so', async (t) => {
  const w = start(t, { codec: 'json' });
  await w.hello();
  w.request(3, 'waitThenChunk', {}, { stream: true });
  await new Promise((r) => setTimeout(r, 50));
  w.send({ type: 'cancel', id: 3 });
  const r = await w.reply(3);
  assert.equal(r.error.type, 'Cancelled');
  await w.call(4, 'echo', { after: true });
  assert.ok(await waitStderr(w, 'sendChunk after cancel'), w.stderr);
  assert.match(w.stderr, /sendChunk after cancel -> false/);
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  assert.deepStrictEqual(w.frames.filter((f) => f.type === 'chunk'), [], 'a chunk after the reply');
});

async function waitStderr(w, text) {
  const deadline = Date.now() + 5000;
  while (!w.stderr.includes(text) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return w.stderr.includes(text);
}

// docs/protocol.md section 4: "A `cancel` for an id that is not running (its
// reply has been sent) is ignored", and "Frames a worker cannot use": a
// `type` the worker does not know gets a ProtocolError with id 0. Frames the
// pool side might send by mistake: cancels without a usable id, host
// replies nobody waits for, a type that is not a string. Nothing but the
// documented replies goes out, and the worker serves on.
for (const codec of ['json', 'msgpack']) {
  test(`stray cancels and host replies are ignored, odd frame types are ProtocolErrors (${codec})`, async (t) => {
    const w = start(t, { codec });
    await w.hello();
    for (const id of [undefined, null, '1', 0, -1, 1.5, 999]) {
      const frame = { type: 'cancel' };
      if (id !== undefined) frame.id = id;
      w.send(frame);
    }
    w.send({ type: 'host_reply', id: 77, success: true, result: 1 });
    w.send({ type: 'host_reply', success: false, error: 'no id' });
    for (const type of [42, 'REQUEST', 'response', 'chunk']) {
      w.send({ type, id: 5, command: 'echo', args: {} });
      const r = await w.reply(0);
      assert.equal(r.error.type, 'ProtocolError', `type ${JSON.stringify(type)}: ${JSON.stringify(r)}`);
    }
    assert.deepStrictEqual((await w.call(6, 'echo', { ok: codec })).result, { ok: codec });
    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
    assert.deepStrictEqual(w.frames, [], 'frames nobody asked for');
  });
}

// README, options: "`worker.serve({ input, write })` serves any readable
// stream, writing frames with `write(buffer)`, without touching the process
// (for tests)". No signal or error listeners added, stdout and console left
// as they were.
test('serve() leaves the process alone: no listeners, stdout and console unchanged', async () => {
  const { Worker } = require('../lib/index');
  const events = ['SIGINT', 'SIGTERM', 'uncaughtException', 'unhandledRejection', 'exit'];
  const before = events.map((e) => process.listenerCount(e));
  const stdout = process.stdout;
  const log = console.log;
  const input = new PassThrough();
  const out = [];
  const worker = new Worker({ codec: 'json', commands: { echo: (args) => args } });
  const served = worker.serve({ input, write: (b) => out.push(Buffer.from(b)) });
  input.write(wire.jsonCodec.encodeFrame({ id: 1, command: 'echo', args: { x: 1 } }));
  input.end();
  await served;
  const frames = wire.decodeFrames(Buffer.concat(out), { validate: wire.validateToPool });
  assert.equal(frames[0].type, 'hello');
  assert.deepStrictEqual(frames[1], { id: 1, success: true, result: { x: 1 } });
  assert.deepStrictEqual(events.map((e) => process.listenerCount(e)), before);
  assert.equal(process.stdout, stdout);
  assert.equal(console.log, log);
});

test('MessagePack: __proto__ keys decode as JSON.parse makes them: own, in their place, at any depth, and as values', () => {
  const codec = wire.getCodec('msgpack');
  // A text that already holds the decoder's first stand-in, so another
  // must be chosen.
  const text = '{"a":{"\\u0001sp000000":1,"__proto__":{"__proto__":"__proto__"},"z":[{"__proto__":2}]},"b":"__proto__"}';
  const want = JSON.parse(text);
  const frame = codec.encodeFrame(want);
  const got = codec.decodePayload(frame.subarray(wire.HEADER_SIZE));
  assert.equal(JSON.stringify(got), JSON.stringify(want));
  assert.deepEqual(Object.keys(got.a), ['\u0001sp000000', '__proto__', 'z']);
  assert.ok(Object.prototype.hasOwnProperty.call(got.a, '__proto__'));
  assert.equal(Object.getPrototypeOf(got.a), Object.prototype);
  assert.equal(Object.getPrototypeOf(got.a.z[0]), Object.prototype);
  assert.equal(Object.getOwnPropertyDescriptor(got.a.z[0], '__proto__').value, 2);
  assert.equal(got.b, '__proto__');
  assert.equal({}.polluted, undefined);
});
