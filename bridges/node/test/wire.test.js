'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');

const wire = require('../lib/wire');
const { loadVectors, fromVectorValue, toVectorValue } = require('./helpers');

const vectors = loadVectors();
const good = vectors.cases.filter((c) => !('error' in c));
const bad = vectors.cases.filter((c) => 'error' in c);

function validatorFor(direction) {
  return direction === 'to_pool' ? wire.validateToPool : wire.validateToWorker;
}

test('the vectors file is the protocol this bridge speaks', () => {
  assert.equal(vectors.protocol, wire.PROTOCOL_VERSION);
  assert.equal(vectors.max_frame_size, wire.DEFAULT_MAX_FRAME_SIZE);
  assert.ok(good.length > 10 && bad.length > 5);
});

for (const c of good) {
  test(`decodes ${c.name}`, () => {
    const values = wire.decodeFrames(Buffer.from(c.frame_hex, 'hex'), {
      codec: c.codec,
      validate: validatorFor(c.direction),
    });
    assert.equal(values.length, 1);
    assert.deepStrictEqual(toVectorValue(values[0]), c.value);
  });

  if (c.encode) {
    test(`encodes ${c.name} byte for byte`, () => {
      const frame = wire.getCodec(c.codec).encodeFrame(fromVectorValue(c.value));
      assert.equal(frame.toString('hex'), c.frame_hex);
    });
  }
}

for (const c of bad) {
  test(`rejects ${c.name} as ${c.error}`, () => {
    assert.throws(
      () => wire.decodeFrames(Buffer.from(c.frame_hex, 'hex'), { codec: c.codec, validate: validatorFor(c.direction) }),
      (err) => err instanceof wire.WireError && err.kind === c.error
    );
  });
}

test('every to_pool case with encode is covered', () => {
  assert.ok(good.some((c) => c.encode && c.direction === 'to_pool' && c.codec === 'json'));
  assert.ok(good.some((c) => c.encode && c.direction === 'to_pool' && c.codec === 'msgpack'));
});

test('frames split at every byte boundary come out whole, and big ones are copied once', () => {
  const codec = wire.jsonCodec;
  const messages = [{ id: 1, command: 'a', args: {} }, { id: 2, command: 'b', args: { s: 'é'.repeat(3000) } }, { type: 'cancel', id: 1 }];
  const bytes = Buffer.concat(messages.map((m) => codec.encodeFrame(m)));
  for (const step of [1, 2, 3, 5, 7, 64, 4096, bytes.length]) {
    const out = [];
    const reader = new wire.FrameReader({
      onFrame: (p) => out.push(codec.decodePayload(p)),
      onError: (e) => assert.fail(e),
    });
    for (let i = 0; i < bytes.length; i += step) reader.push(bytes.subarray(i, i + step));
    reader.end();
    assert.deepStrictEqual(out, messages, `step ${step}`);
  }
});

test('an oversized frame is reported and skipped, and the stream stays in step', () => {
  const codec = wire.jsonCodec;
  const big = Buffer.alloc(4 + 100, 0x20);
  big.writeUInt32BE(100, 0);
  const after = codec.encodeFrame({ id: 3, command: 'x', args: {} });
  const out = [];
  const errors = [];
  const reader = new wire.FrameReader({ maxFrameSize: 50, onFrame: (p) => out.push(codec.decodePayload(p)), onError: (e) => errors.push(e) });
  const bytes = Buffer.concat([big, after]);
  reader.push(bytes.subarray(0, 30));
  reader.push(bytes.subarray(30));
  reader.end();
  assert.equal(errors.length, 1);
  assert.equal(errors[0].kind, 'too_large');
  assert.deepStrictEqual(out, [{ id: 3, command: 'x', args: {} }]);
});

test('an empty frame and a non-map frame are errors, not crashes', () => {
  assert.throws(() => wire.decodeFrames(Buffer.from('00000000', 'hex')), (e) => e.kind === 'invalid_payload');
  assert.throws(() => wire.decodeFrames(Buffer.from('000000013a', 'hex'), { codec: 'json' }), (e) => e.kind === 'invalid_payload');
  assert.throws(() => wire.decodeFrames(Buffer.from('0000000101', 'hex'), { codec: 'msgpack' }), (e) => e.kind === 'wrong_type');
  assert.throws(() => wire.decodeFrames(Buffer.from('0000000491010203', 'hex'), { codec: 'msgpack' }), (e) => e.kind === 'invalid_payload');
});

test('JSON keeps non-ASCII text as UTF-8 and real U+FFFD characters are accepted', () => {
  const frame = wire.jsonCodec.encodeFrame({ s: 'héllo ✓ \ufffd' });
  assert.ok(frame.includes(Buffer.from('héllo ✓ \ufffd')));
  assert.deepStrictEqual(wire.decodeFrames(frame), [{ s: 'héllo ✓ \ufffd' }]);
});

test('MessagePack: integral numbers are ints, floats are float64, Buffers are bin, bad UTF-8 anywhere is caught', () => {
  const codec = wire.getCodec('msgpack');
  assert.equal(codec.encodeFrame({ a: 3 }).subarray(4).toString('hex'), '81a16103');
  assert.equal(codec.encodeFrame({ a: -1.5 }).subarray(4).toString('hex'), '81a161cbbff8000000000000');
  const value = { nested: [{ bin: Buffer.from([0, 255]), text: 'ünï', big: 'x'.repeat(300) }], n: -70000 };
  const [decoded] = wire.decodeFrames(codec.encodeFrame(value), { codec: 'msgpack' });
  assert.deepStrictEqual(toVectorValue(decoded), toVectorValue(value));
  // A bad string inside an array inside a map, after a bin of 0xff bytes.
  const payload = Buffer.from('81a16192c402ffffa2fffe', 'hex');
  const frame = Buffer.concat([Buffer.from([0, 0, 0, payload.length]), payload]);
  assert.throws(() => wire.decodeFrames(frame, { codec: 'msgpack' }), (e) => e.kind === 'invalid_utf8');
});

test('an unknown codec name is refused', () => {
  assert.throws(() => wire.getCodec('yaml'), /unknown codec/);
});
