'use strict';

// The README's complete worker must run as written.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { BRIDGE_DIR, WorkerProcess } = require('./helpers');

function readmeExample() {
  const readme = fs.readFileSync(path.join(BRIDGE_DIR, 'README.md'), 'utf8');
  const match = readme.match(/## A complete worker\n+```js\n([\s\S]*?)```/);
  assert.ok(match, 'README lacks the complete worker example');
  return match[1];
}

for (const codec of ['json', 'msgpack']) {
  test(`the README example works (${codec})`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-readme-'));
    const script = path.join(dir, 'my_worker.js');
    fs.writeFileSync(script, readmeExample());
    const w = new WorkerProcess(script, { codec });
    t.after(() => {
      w.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    await w.hello();

    let r = await w.call(1, 'greet', { name: 'Ada' });
    assert.deepStrictEqual(r.result, { greeting: 'Hello, Ada!' });

    w.request(2, 'count', { to: 2 }, { stream: true });
    assert.deepStrictEqual((await w.next((f) => f.type === 'chunk')).data, { i: 1 });
    assert.deepStrictEqual((await w.next((f) => f.type === 'chunk')).data, { i: 2 });
    assert.deepStrictEqual((await w.reply(2)).result, { counted: 2 });

    w.request(3, 'count', { to: 1000 });
    await new Promise((resolve) => setTimeout(resolve, 30));
    w.send({ type: 'cancel', id: 3 });
    assert.equal((await w.reply(3)).error.type, 'Cancelled');

    const store = new Map();
    for (const [id, expected] of [[4, 1], [5, 2]]) {
      w.request(id, 'visits', {}, { session_id: 's1' });
      for (let i = 0; i < 2; i++) {
        const call = await w.next((f) => f.type === 'host_call');
        let result = null;
        if (call.function === 'session.get') result = store.has(call.args.key) ? store.get(call.args.key) : null;
        else store.set(call.args.key, call.args.value);
        w.send({ type: 'host_reply', id: call.id, success: true, result });
      }
      assert.deepStrictEqual((await w.reply(id)).result, { visits: expected });
    }

    r = await w.call(6, 'fail', { item: 'x' });
    assert.deepStrictEqual([r.error.type, r.error.message], ['RangeError', 'no such item: x']);
    r = await w.call(7, 'shout', { text: 'hi' });
    assert.equal(r.result, 'HI');

    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  });
}
