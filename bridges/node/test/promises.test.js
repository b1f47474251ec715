'use strict';

// What docs/protocol.md and docs/bridges.md promise of the Node.js bridge
// that the other suites do not already show, against real worker processes.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { WorkerProcess, scriptDir, until } = require('./helpers');

const SCRIPT = `
const fs = require('node:fs');
const path = require('node:path');
const { Worker } = require('snakepit-bridge');

class QuietError extends Error {}
class NamedError extends Error {
  constructor(m) { super(m); this.name = 'CustomName'; }
}

const worker = new Worker({
  commands: {
    chunk(args, ctx) {
      return { sent: ctx.sendChunk({ part: 1 }), stream: ctx.streamRequested };
    },
    quiet() { throw new QuietError('no name of its own'); },
    named() { throw new NamedError('named'); },
    range() { throw new RangeError('out of range'); },
    unencodable() { return { n: 10n }; },
    async block(args, ctx) {
      fs.appendFileSync(path.join(args.dir, 'started-' + ctx.requestId), 'x');
      while (!fs.existsSync(args.until)) await new Promise((r) => setTimeout(r, 10));
      return 'done';
    },
  },
});
worker.run();
`;


// protocol.md section 4: "The stream ends inside a frame ...: the worker
// treats it as the end of stdin and exits 0; it sends nothing".
test('EOF inside a frame: the worker exits 0 and sends nothing', async (t) => {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-node-promises-');
  for (const cut of [Buffer.from([0, 0]), Buffer.concat([Buffer.from([0, 0, 0, 32]), Buffer.from('{"id":1,')])]) {
    const w = new WorkerProcess(script);
    t.after(() => w.kill());
    await w.hello();
    w.sendRaw(cut);
    const { code } = await w.close();
    assert.equal(code, 0, w.stderr);
    assert.deepStrictEqual(w.frames, [], 'nothing after the hello');
  }
});

// bridges.md: `ctx.sendChunk(data)` "returns `false` and sends nothing
// without a stream"; protocol.md: the Node bridge omits a response's
// `timestamp`.
test('sendChunk sends only when the caller streams; replies carry no timestamp', async (t) => {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-node-promises-');
  for (const codec of ['json', 'msgpack']) {
    const w = new WorkerProcess(script, { codec });
    t.after(() => w.kill());
    await w.hello();
    let r = await w.call(1, 'chunk');
    assert.deepStrictEqual(r.result, { sent: false, stream: false });
    assert.equal(r.timestamp, undefined);
    assert.deepStrictEqual(w.frames, [], 'no chunk was sent');
    r = await w.call(2, 'chunk', {}, { stream: true });
    assert.deepStrictEqual(r.result, { sent: true, stream: true });
    const chunk = await w.next((f) => f.type === 'chunk');
    assert.deepStrictEqual(chunk, { type: 'chunk', id: 2, data: { part: 1 } });
    await w.close();
  }
});

// bridges.md: "A thrown error ... becomes a failed reply whose `type` is the
// error's `name`, or its class name for a subclass of `Error` that does not
// set one; `traceback` is `err.stack`. A result that cannot be encoded fails
// with `EncodeError`."
test('error types: the name, else the class name; unencodable results are EncodeError', async (t) => {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-node-promises-');
  const w = new WorkerProcess(script);
  t.after(() => w.kill());
  await w.hello();
  const type = async (id, command) => {
    const r = await w.call(id, command);
    assert.equal(r.success, false);
    if (command !== 'unencodable') assert.match(r.error.traceback, /\n    at /, JSON.stringify(r));
    return r.error.type;
  };
  assert.equal(await type(1, 'quiet'), 'QuietError');
  assert.equal(await type(2, 'named'), 'CustomName');
  assert.equal(await type(3, 'range'), 'RangeError');
  assert.equal(await type(4, 'unencodable'), 'EncodeError');
  const r = await w.call(5, 'chunk');
  assert.equal(r.success, true, 'the worker serves on');
  await w.close();
});

// bridges.md: `maxConcurrency` "default 16; the variable
// `SNAKEPIT_MAX_CONCURRENCY` overrides it".
test('max_concurrency is 16 unless SNAKEPIT_MAX_CONCURRENCY says otherwise', async (t) => {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-node-promises-');
  let w = new WorkerProcess(script);
  t.after(() => w.kill());
  assert.equal((await w.hello()).capabilities.max_concurrency, 16);
  await w.close();
  w = new WorkerProcess(script, { env: { SNAKEPIT_MAX_CONCURRENCY: '3' } });
  t.after(() => w.kill());
  assert.equal((await w.hello()).capabilities.max_concurrency, 3);
  await w.close();
});

// protocol.md section 4: a request whose `id` is already running: the worker
// "must not start a second handler under the same id".
test('a second request under a running id never starts a handler', async (t) => {
  const { dir, script } = scriptDir(t, SCRIPT, 'snakepit-node-promises-');
  const w = new WorkerProcess(script);
  t.after(() => w.kill());
  await w.hello();
  const stop = path.join(dir, 'stop');
  const started = (id) => path.join(dir, `started-${id}`);
  const args = { dir, until: stop };
  w.request(7, 'block', args);
  await until(() => fs.existsSync(started(7)), 'request 7 runs');
  w.request(7, 'block', args);
  w.request(8, 'block', args);
  await until(() => fs.existsSync(started(8)), 'request 8 runs');
  fs.writeFileSync(stop, '');
  assert.equal((await w.reply(8)).result, 'done');
  await w.close();
  assert.equal(fs.readFileSync(started(7), 'utf8'), 'x', 'one handler ran under id 7');
  // The running call answers, once; the duplicate is dropped with a line on
  // stderr (a second final reply under id 7 would look stale to the pool).
  const sevens = w.frames.filter((f) => f.id === 7);
  assert.equal(sevens.length, 1, JSON.stringify(sevens));
  assert.equal(sevens[0].success, true);
  assert.equal(sevens[0].result, 'done');
});
