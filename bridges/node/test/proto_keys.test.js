'use strict';

// MessagePack `__proto__` keys
// (decodeWithProtoKeys / restoreProtoKeys in lib/wire.js): edge cases of
// the stand-in, the depth of the restore, and bytes that are not strs.

const test = require('node:test');
const assert = require('node:assert/strict');

const wire = require('../lib/wire');

const PROTO = '__proto__';

// An object with an own enumerable key __proto__, as JSON.parse makes it.
function withProto(value, rest = {}) {
  const o = {};
  Object.defineProperty(o, PROTO, { value, enumerable: true, writable: true, configurable: true });
  return Object.assign(o, rest);
}

function roundTrip(value) {
  const codec = wire.getCodec('msgpack');
  const frame = codec.encodeFrame(value);
  return codec.decodePayload(frame.subarray(wire.HEADER_SIZE));
}

test('a __proto__ key in the deepest map a frame may hold (127 levels) is restored as an own key', () => {
  // The frame's map is level 1; `args` level 2; then 124 arrays; the map at
  // level 127 holds the key.
  let inner = withProto(1, { k: 'x' });
  for (let i = 0; i < 124; i++) inner = [inner];
  const got = roundTrip({ id: 1, command: 'echo', args: { v: inner } });
  let v = got.args.v;
  for (let i = 0; i < 124; i++) v = v[0];
  assert.deepEqual(Object.keys(v), [PROTO, 'k']);
  assert.ok(Object.prototype.hasOwnProperty.call(v, PROTO));
  assert.equal(Object.getOwnPropertyDescriptor(v, PROTO).value, 1);
  assert.equal(Object.getPrototypeOf(v), Object.prototype);
});

test('stand-ins already in the payload and longer strs holding __proto__ come back as they were', () => {
  const taken = ['\u0001sp000000', '\u0001sp000001', '\u0001sp000002'];
  const value = withProto('x__proto__', {
    [taken[0]]: taken[1],
    list: [taken[2], 'a__proto__b', PROTO],
    '__proto__x': 2,
  });
  const got = roundTrip(value);
  assert.equal(JSON.stringify(got), JSON.stringify(value));
  assert.deepEqual(Object.keys(got), Object.keys(value));
  assert.equal(Object.getOwnPropertyDescriptor(got, PROTO).value, 'x__proto__');
  assert.deepEqual(got.list, [taken[2], 'a__proto__b', PROTO]);
  assert.equal({}.x, undefined);
});

test('bin bytes spelling __proto__ beside a __proto__ key stay bytes, untouched', () => {
  const bytes = Buffer.from(PROTO);
  const got = roundTrip(withProto({ inner: true }, { raw: bytes }));
  assert.ok(got.raw instanceof Uint8Array);
  assert.equal(Buffer.from(got.raw).toString(), PROTO);
  assert.deepEqual(Object.getOwnPropertyDescriptor(got, PROTO).value, { inner: true });
});
