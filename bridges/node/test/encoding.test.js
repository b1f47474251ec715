'use strict';

// Protocol strings are UTF-8 (docs/protocol.md section 3). A JavaScript
// string holding half a surrogate pair has no UTF-8 form. docs/bridges.md and
// the README: "A result that cannot be encoded fails with `EncodeError`", "A
// thrown error ... becomes a failed reply", and the worker serves on. So no
// frame the worker writes may hold a lone surrogate, in either codec.

const test = require('node:test');
const assert = require('node:assert/strict');

const wire = require('../lib/wire');
const { errorToWire } = require('../lib/worker');
const { WorkerProcess, scriptDir } = require('./helpers');

const LONE_HIGH = '\u{1F600}'.slice(0, 1); // '\ud83d'
const LONE_LOW = '\u{1F600}'.slice(1); // '\ude00'
const CODECS = ['json', 'msgpack'];

// Every string in a decoded frame, keys included, is well-formed.
function assertWellFormed(value, where = 'frame') {
  if (typeof value === 'string') {
    assert.ok(!/\p{Surrogate}/u.test(value), `${where} holds a lone surrogate: ${JSON.stringify(value)}`);
  } else if (Array.isArray(value)) {
    value.forEach((v, i) => assertWellFormed(v, `${where}[${i}]`));
  } else if (value !== null && typeof value === 'object' && !ArrayBuffer.isView(value)) {
    for (const [k, v] of Object.entries(value)) {
      assertWellFormed(k, `${where} key`);
      assertWellFormed(v, `${where}.${k}`);
    }
  }
}

function isEncodeError(err) {
  return err instanceof Error && err.name === 'EncodeError' && /lone surrogate/.test(err.message);
}

for (const codec of CODECS) {
  test(`${codec}: a lone surrogate anywhere is refused with an EncodeError`, () => {
    const c = wire.getCodec(codec);
    const bad = [
      { result: LONE_HIGH },
      { result: LONE_LOW },
      { result: `ends with half a pair ${LONE_HIGH}` },
      { result: `${LONE_LOW} starts with the other half` },
      { result: { [LONE_HIGH]: 1 } }, // a key
      { result: [1, { deep: [{ text: `x${LONE_LOW}y` }] }] }, // nested
      // Long enough that @msgpack/msgpack encodes it through TextEncoder,
      // which would put U+FFFD in place of the surrogate without a word.
      { result: 'a'.repeat(5000) + LONE_HIGH + 'b'.repeat(5000) },
      { result: `${LONE_LOW}${LONE_HIGH}` }, // the halves in the wrong order
    ];
    for (const value of bad) {
      assert.throws(() => c.encodeFrame({ id: 1, success: true, ...value }), isEncodeError, JSON.stringify(value));
    }
  });

  test(`${codec}: pairs, and text that merely looks like an escape, go out unchanged`, () => {
    const c = wire.getCodec(codec);
    const good = {
      emoji: '\u{1F600} caf\u00e9 \u{10FFFF}',
      long: '\u{1F600}'.repeat(3000),
      backslash_u: '\\ud83d', // a backslash, then the text "ud83d"
      backslashes: '\\\\ud83d \\\\\\ud800x',
      control: '\u0001\n\t"',
      [`key \u{1F600}`]: [1.5, null, true, { nested: '\u{1F600}' }],
    };
    const [decoded] = wire.decodeFrames(c.encodeFrame({ id: 1, success: true, result: good }), {
      codec,
      validate: wire.validateToPool,
    });
    assert.deepStrictEqual(decoded.result, good);
  });
}

test('errorToWire replaces lone surrogates in type, message and traceback with U+FFFD', () => {
  const err = new Error(`bad: ${LONE_LOW} and ${LONE_HIGH}`);
  err.name = `Odd${LONE_HIGH}Error`;
  const wired = errorToWire(err);
  assert.equal(wired.type, 'Odd\ufffdError');
  assert.equal(wired.message, 'bad: \ufffd and \ufffd');
  assert.match(wired.traceback, /bad: \ufffd and \ufffd/);
  assertWellFormed(wired);
  // A thrown string, and well-formed text left as it is.
  assert.deepStrictEqual(errorToWire(`x${LONE_HIGH}`), { type: 'Error', message: 'x\ufffd' });
  assert.equal(errorToWire(new Error('\u{1F600} ok')).message, '\u{1F600} ok');
});

const SCRIPT = `
const { Worker } = require('snakepit-bridge');
const HIGH = '\\u{1F600}'.slice(0, 1);
const LOW = '\\u{1F600}'.slice(1);
new Worker({ commands: {
  lone_result: () => '\\u{1F600}'.slice(0, 1),
  lone_key: () => ({ ok: 1, [LOW]: 2 }),
  lone_nested: async () => ({ list: [1, { text: 'x'.repeat(200) + HIGH }] }),
  lone_error: () => { throw new Error('bad: ' + LOW); },
  lone_rejection: async () => { throw new TypeError('bad: ' + HIGH); },
  lone_string_thrown: () => { throw 'thrown ' + HIGH; },
  lone_chunk(args, ctx) {
    try {
      ctx.sendChunk({ text: HIGH });
      return 'sent';
    } catch (err) {
      ctx.sendChunk({ text: 'fine' });
      return err.name;
    }
  },
  lone_chunk_uncaught(args, ctx) {
    ctx.sendChunk(['a', LOW]);
    return 'not reached';
  },
  async lone_host(args, ctx) {
    try {
      await ctx.callHost('echo', { [HIGH]: 1 });
      return 'called';
    } catch (err) {
      return err.name;
    }
  },
  pid: () => ({ pid: process.pid }),
}}).run();
`;

for (const codec of CODECS) {
  test(`${codec}: a worker answers lone surrogates with failed replies and serves on`, async (t) => {
    const { script } = scriptDir(t, SCRIPT, 'snakepit-node-encoding-');
    const w = new WorkerProcess(script, { codec });
    t.after(() => w.kill());
    await w.hello();
    const { result: first } = await w.call(1, 'pid');
    let id = 1;
    const call = async (command, extra = {}) => {
      const reply = await w.call(++id, command, {}, extra);
      assertWellFormed(reply, command);
      return reply;
    };

    // A result holding one: EncodeError, a failed reply.
    for (const command of ['lone_result', 'lone_key', 'lone_nested']) {
      const r = await call(command);
      assert.equal(r.success, false, `${command}: ${JSON.stringify(r)}`);
      assert.equal(r.error.type, 'EncodeError', command);
      assert.match(r.error.message, /lone surrogate/, command);
    }

    // A thrown error holding one: a failed reply of its own type, with the
    // half pair replaced by U+FFFD.
    let r = await call('lone_error');
    assert.equal(r.success, false);
    assert.equal(r.error.type, 'Error');
    assert.equal(r.error.message, 'bad: \ufffd');
    assert.match(r.error.traceback, /bad: \ufffd/);
    r = await call('lone_rejection');
    assert.deepStrictEqual([r.error.type, r.error.message], ['TypeError', 'bad: \ufffd']);
    r = await call('lone_string_thrown');
    assert.deepStrictEqual([r.error.type, r.error.message], ['Error', 'thrown \ufffd']);

    // A chunk holding one throws in the handler and sends nothing; the
    // handler may go on.
    r = await call('lone_chunk', { stream: true });
    assert.deepStrictEqual([r.success, r.result], [true, 'EncodeError']);
    const chunk = await w.next((f) => f.type === 'chunk' && f.id === id);
    assert.deepStrictEqual(chunk.data, { text: 'fine' });
    r = await call('lone_chunk_uncaught', { stream: true });
    assert.deepStrictEqual([r.success, r.error.type], [false, 'EncodeError']);

    // Host call arguments holding one: the call rejects, nothing is sent.
    r = await call('lone_host');
    assert.deepStrictEqual([r.success, r.result], [true, 'EncodeError']);

    // The same worker serves on, and never wrote anything else.
    const { result: last } = await w.call(++id, 'pid');
    assert.equal(last.pid, first.pid);
    assert.equal(w.frames.length, 0, `unexpected frames: ${JSON.stringify(w.frames)}`);
    await w.close();
  });
}
