'use strict';

// MessagePack frames the pool may send that the three bridges must handle
// alike: maps whose keys are not strings (real worker processes, driven
// over pipes).

const test = require('node:test');
const assert = require('node:assert/strict');

const { GENERIC_WORKER, WorkerProcess } = require('./helpers');

const frame = (payload) => {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(payload.length, 0);
  return Buffer.concat([header, payload]);
};

// {"id": <id>, "command": "echo", "args": {"m": {<key>: "a"}}}, where
// `key` is the MessagePack bytes of the inner map's key.
function echoWithKey(id, key) {
  return frame(
    Buffer.concat([
      Buffer.from([0x83, 0xa2]),
      Buffer.from('id'),
      Buffer.from([id, 0xa7]),
      Buffer.from('command'),
      Buffer.from([0xa4]),
      Buffer.from('echo'),
      Buffer.from([0xa4]),
      Buffer.from('args'),
      Buffer.from([0x81, 0xa1]),
      Buffer.from('m'),
      Buffer.from([0x81]),
      key,
      Buffer.from([0xa1]),
      Buffer.from('a'),
    ])
  );
}

async function spawn(t) {
  const w = new WorkerProcess(GENERIC_WORKER, { codec: 'msgpack' });
  t.after(() => w.kill());
  await w.hello();
  return w;
}

// What the host's MessagePack encoder writes for a typed map argument with
// integer keys (a Rust HashMap<u32, _>). docs/protocol.md section 3: "Every
// bridge accepts such keys ... Node.js objects have only string keys, so a
// number becomes its decimal text". The test checks that echo answers under
// the request id with the key as "1", and the worker exits 0 at the end.
test('an integer map key in the args is served under the request id', async (t) => {
  const w = await spawn(t);
  w.sendRaw(echoWithKey(8, Buffer.from([0x01])));
  const reply = await w.reply(8);
  assert.equal(reply.success, true, JSON.stringify(reply));
  assert.deepStrictEqual(reply.result.echoed, { m: { 1: 'a' } });
  const { code } = await w.close();
  assert.equal(code, 0);
});

// A map keyed by `bin` is valid MessagePack, and what the host's encoder
// writes for a typed map argument keyed by bytes (serde_bytes::ByteBuf).
// docs/protocol.md section 3: every bridge accepts such keys, and in
// Node.js a `bin` key becomes "its bytes as a Latin-1 string". The test
// checks that echo answers under the request id with the key as "k". The
// decoder once threw on such a key and the request was never answered.
test(
  'a bin map key in the args is answered under the request id',
  async (t) => {
    const w = await spawn(t);
    w.sendRaw(echoWithKey(7, Buffer.from([0xc4, 0x01, 0x6b])));
    const reply = await w.next((f) => f.type === undefined);
    assert.equal(reply.id, 7, JSON.stringify(reply));
    assert.equal(reply.success, true, JSON.stringify(reply));
    // A bin key becomes its bytes as a Latin-1 string.
    assert.deepStrictEqual(reply.result.echoed, { m: { k: 'a' } });
    const { code } = await w.close();
    assert.equal(code, 0);
  }
);
