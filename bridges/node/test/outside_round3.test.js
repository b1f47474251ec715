'use strict';

// Outside review, round 3: the worker driven over its real pipes with
// values a hostile or broken pool could put in well-formed frames (maps
// where text belongs, MessagePack ext values where maps belong), where the
// earlier audits sent bad framing and bad ids; and a SIGTERM while the pool
// is not reading. Each test names the promise of docs/protocol.md or the
// README it checks. Bounds on waiting only turn hangs into failures;
// nothing is timed for speed.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const wire = require('../lib/wire');
const { WorkerProcess, scriptDir, bridgeNodePath } = require('./helpers');

const SCRIPT = `
const { Worker, genericCommands } = require('snakepit-bridge');
new Worker({
  commands: {
    ...genericCommands(),
    // Reports how its one host call ended, so the test sees what the
    // handler saw.
    async host(args, ctx) {
      try {
        return { ok: await ctx.callHost('f', {}) };
      } catch (err) {
        return { name: err.name, type: err.type, message: err.message, hostError: err.constructor.name };
      }
    },
  },
}).run();
`;

const WAIT_MS = 20000; // generous: a loaded 2-core machine

function haveMsgpack() {
  try {
    wire.getCodec('msgpack').encodeFrame({ a: 1 });
    return true;
  } catch (_) {
    return false;
  }
}
const CODECS = haveMsgpack() ? ['json', 'msgpack'] : ['json'];

async function spawnWorker(t, codec) {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-node-round3-');
  // The worker finds @msgpack/msgpack where this test process did, also
  // when that is only on NODE_PATH.
  const nodePath = [bridgeNodePath(), process.env.NODE_PATH].filter(Boolean).join(path.delimiter);
  const w = new WorkerProcess(script, { codec, env: { NODE_PATH: nodePath } });
  t.after(() => w.kill());
  await w.hello();
  return w;
}

// A map whose `toString` is not a function: String() and template literals
// throw on it (and on an array holding it), while JSON and MessagePack
// carry it as any other map.
const POISON = { toString: 1 };

for (const codec of CODECS) {
  // protocol.md section 4, host_reply: one whose id is not that of the host
  // call waited for is ignored ("an id that is not an integer" included);
  // one without success: true fails the host call with the error's type and
  // message, a plain-string error being the message.
  test(`host replies holding maps where text belongs fail or are ignored, never crash the worker (${codec})`,
    async (t) => {
      const w = await spawnWorker(t, codec);
      // Each error with the type and message the handler must see: a
      // field that is fine comes through as sent; one that is no text is
      // described rather than refused; an error that is no map gives
      // HostError and the bridge's own message.
      const cases = [
        [{ type: POISON, message: 'boom' }, null, 'boom'],
        [{ type: 'KeyError', message: POISON }, 'KeyError', null],
        [[POISON], 'HostError', 'host call failed'],
        [POISON, 'HostError', 'host call failed'],
      ];
      let id = 1;
      for (const [error, type, message] of cases) {
        w.request(id, 'host');
        const call = await w.next((f) => f.type === 'host_call' && f.request_id === id, WAIT_MS);
        // Ignored: ids that name no host call, here maps.
        w.send({ type: 'host_reply', id: POISON, success: true, result: 'wrong' });
        w.send({ type: 'host_reply', id: [POISON], success: false, error: POISON });
        w.send({ type: 'host_reply', id: call.id, success: false, error });
        const reply = await w.reply(id, WAIT_MS);
        const seen = JSON.stringify(reply);
        assert.equal(reply.success, true, seen);
        assert.equal(reply.result.hostError, 'HostCallError', seen);
        assert.equal(typeof reply.result.type, 'string', seen);
        assert.equal(typeof reply.result.message, 'string', seen);
        assert.notEqual(reply.result.type, '', seen);
        assert.notEqual(reply.result.message, '', seen);
        if (type !== null) assert.equal(reply.result.type, type, seen);
        if (message !== null) assert.equal(reply.result.message, message, seen);
        id++;
      }
      const echo = await w.call(id, 'echo', { still: 'serving' });
      assert.deepEqual(echo.result.echoed, { still: 'serving' });
      assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
      assert.deepEqual(w.frames, [], 'no frame beyond the replies awaited');
    });

  // protocol.md section 7: compute fails with `Unsupported operation: X`
  // for anything but its operations, and random with `Unsupported random
  // type: X`, as failed replies of type Error in Node.
  test(`generic compute and random refuse an operation or type that is a map with type Error (${codec})`,
    async (t) => {
      const w = await spawnWorker(t, codec);
      const cases = [
        [1, 'compute', { operation: POISON, a: 1, b: 2 }, /^Unsupported operation: /],
        [2, 'compute', { operation: [POISON], a: 1, b: 2 }, /^Unsupported operation: /],
        [3, 'random', { type: POISON }, /^Unsupported random type: /],
        [4, 'compute', { operation: { op: 'add' }, a: 1, b: 2 }, /^Unsupported operation: /],
      ];
      for (const [id, command, args, message] of cases) {
        w.request(id, command, args);
        const reply = await w.reply(id, WAIT_MS);
        assert.equal(reply.success, false, JSON.stringify(reply));
        assert.equal(reply.error.type, 'Error', JSON.stringify(reply));
        assert.match(reply.error.message, message);
      }
      assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
    });
}

if (CODECS.includes('msgpack')) {
  // protocol.md section 4, frames a worker cannot use: a payload that is not
  // a map is a ProtocolError under id 0; args that are not a map are an
  // InvalidRequest under the request's id. An `ext` value (an ExtData, the
  // timestamp extension's too) is not a map, though it decodes to a
  // JavaScript object.
  test('MessagePack: an ext value as the whole frame or as args is not a map', async (t) => {
    const w = await spawnWorker(t, 'msgpack');
    const lib = wire.loadMsgpack();
    const frame = (value) => {
      const body = Buffer.from(lib.encode(value));
      const head = Buffer.alloc(4);
      head.writeUInt32BE(body.length);
      return Buffer.concat([head, body]);
    };
    const ext = new lib.ExtData(5, new Uint8Array([1, 2]));
    const ts = '2026-11-27T12:24:04.051023Z';
    for (const whole of [ext, new Date(0)]) {
      w.sendRaw(frame(whole));
      const reply = await w.reply(0, WAIT_MS);
      assert.equal(reply.success, false);
      assert.equal(reply.error.type, 'ProtocolError', JSON.stringify(reply));
      assert.equal(reply.error.message, 'frame is not a map');
    }
    let id = 1;
    for (const args of [ext, new Date(0)]) {
      w.sendRaw(frame({ id, command: 'echo', args, timestamp: ts }));
      const reply = await w.reply(id, WAIT_MS);
      assert.equal(reply.success, false, JSON.stringify(reply));
      assert.equal(reply.error.type, 'InvalidRequest');
      assert.equal(reply.error.message, 'field args must be a map');
      id++;
    }
    // ext values inside the args still reach the handler and go back as ext.
    w.sendRaw(frame({ id, command: 'echo', args: { v: ext }, timestamp: ts }));
    const echo = await w.reply(id, WAIT_MS);
    assert.equal(echo.success, true, JSON.stringify(echo));
    assert.ok(echo.result.echoed.v instanceof lib.ExtData);
    assert.equal(echo.result.echoed.v.type, 5);
    assert.deepEqual(Array.from(echo.result.echoed.v.data), [1, 2]);
    // The same beside a map key __proto__, which the bridge decodes by a
    // slower way of its own (README, Codecs: "An ext value arrives as an
    // ExtData and is written back as the same ext").
    id++;
    const args = JSON.parse('{"__proto__": 1}');
    args.v = ext;
    w.sendRaw(frame({ id, command: 'echo', args, timestamp: ts }));
    const proto = await w.reply(id, WAIT_MS);
    assert.equal(proto.success, true, JSON.stringify(proto));
    assert.ok(Object.prototype.hasOwnProperty.call(proto.result.echoed, '__proto__'));
    assert.ok(proto.result.echoed.v instanceof lib.ExtData, JSON.stringify(proto.result.echoed.v));
    assert.equal(proto.result.echoed.v.type, 5);
    assert.deepEqual(await w.close(), { code: 0, signal: null }, w.stderr);
    assert.deepEqual(w.frames, []);
  });
}

if (CODECS.includes('msgpack')) {
  // README, Codecs: "An `ext` value arrives as an `ExtData`". A map key
  // __proto__ anywhere in a frame sends the frame down a slower decoding
  // path of the bridge's own; ext values (the timestamp extension too)
  // must come out of it as the decoder made them, not as plain maps.
  test('MessagePack: ext values beside a __proto__ key decode as they do without one', () => {
    const codec = wire.getCodec('msgpack');
    const lib = wire.loadMsgpack();
    for (const withProto of [false, true]) {
      const args = withProto ? JSON.parse('{"__proto__": 1}') : {};
      args.v = new lib.ExtData(5, new Uint8Array([7]));
      args.d = new Date(0);
      args.list = [new lib.ExtData(6, new Uint8Array([8]))];
      const msg = codec.decodePayload(Buffer.from(lib.encode({ id: 1, command: 'echo', args })));
      assert.equal(Object.prototype.hasOwnProperty.call(msg.args, '__proto__'), withProto);
      assert.ok(msg.args.v instanceof lib.ExtData, `withProto=${withProto}`);
      assert.deepEqual([msg.args.v.type, Array.from(msg.args.v.data)], [5, [7]]);
      // The timestamp extension too, since round 5 (an ExtData of type -1).
      assert.ok(msg.args.d instanceof lib.ExtData, `withProto=${withProto}`);
      assert.deepEqual([msg.args.d.type, Array.from(msg.args.d.data)], [-1, [0, 0, 0, 0]]);
      assert.ok(msg.args.list[0] instanceof lib.ExtData, `withProto=${withProto}`);
    }
  });
}

// protocol.md section 6: "A worker exits cleanly on SIGTERM"; bridges.md:
// "SIGTERM: exit 0 promptly". The pool may stop reading a worker's stdout
// for a while (a stream's reader fallen behind, section 5), and a worker
// that writes then waits. Frames were written with a blocking writeSync,
// so no JavaScript ran until the pool read again, the SIGTERM listener
// included: the worker was only stopped by the SIGKILL after it. Since
// round 5 what the pipe does not take waits for a timer instead.
test('SIGTERM ends a worker blocked writing a frame the pool does not read', async (t) => {
  const { script } = scriptDir(t, `
const { Worker } = require('snakepit-bridge');
new Worker({ commands: {
  big() {
    console.error('round3: big result made');
    return 'x'.repeat(8 << 20); // far more than a pipe holds
  },
} }).run();
`, 'snakepit-node-round3-');
  const w = new WorkerProcess(script);
  t.after(() => w.kill());
  await w.hello();
  w.child.stdout.pause(); // the pool stops reading
  w.request(1, 'big');
  const deadline = Date.now() + WAIT_MS;
  while (!w.stderr.includes('round3: big result made')) {
    assert.ok(Date.now() < deadline, 'the handler never ran');
    await new Promise((r) => setTimeout(r, 20));
  }
  w.child.kill('SIGTERM');
  const exited = await Promise.race([
    w.exited,
    new Promise((r) => setTimeout(() => r('still running'), WAIT_MS)),
  ]);
  assert.deepEqual(exited, { code: 0, signal: null });
});
