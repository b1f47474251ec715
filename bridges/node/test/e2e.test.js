'use strict';

// The generic worker and an example user worker as real child processes,
// spoken to over pipes in both codecs, as the pool does.

const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { setTimeout: sleep } = require('node:timers/promises');

const { GENERIC_WORKER, EXAMPLE_WORKER, BRIDGE_DIR, WorkerProcess } = require('./helpers');

for (const codec of ['json', 'msgpack']) {
  test(`generic worker (${codec}): hello, handshake, commands, errors, EOF`, async (t) => {
    const w = new WorkerProcess(GENERIC_WORKER, { codec, args: ['--mode', 'pool-worker', '--snakepit-run-id', 'r1'] });
    t.after(() => w.kill());
    const hello = await w.hello();
    assert.equal(hello.protocol, 1);
    assert.equal(hello.pid, w.child.pid);
    assert.deepStrictEqual(hello.capabilities, { max_concurrency: 16, cancel: true, sigint: false, streaming: true, host_calls: true });

    let r = await w.call(1, 'ping', { initialization: true, worker_id: 'pool_worker_1_210' });
    assert.equal(r.success, true);
    assert.equal(r.result.status, 'ok');
    assert.equal(r.result.bridge_type, 'generic_javascript');
    assert.equal(r.result.worker_id, 'pool_worker_1_210');
    assert.equal(r.result.pid, w.child.pid);
    assert.equal(r.result.node_version, process.version);
    assert.equal(r.result.platform, process.platform);
    assert.deepStrictEqual(r.result.echo, { initialization: true, worker_id: 'pool_worker_1_210' });
    assert.deepStrictEqual(Object.keys(r.result), [
      'status', 'bridge_type', 'uptime', 'requests_handled', 'timestamp', 'worker_id', 'echo', 'pid', 'node_version', 'platform',
    ]);

    r = await w.call(2, 'ping', { health_check: true });
    assert.equal(r.result.status, 'ok');
    assert.equal(r.result.requests_handled, 2);

    r = await w.call(3, 'echo', { message: 'héllo ✓', n: [1, 2.5, null] });
    assert.deepStrictEqual(r.result.echoed, { message: 'héllo ✓', n: [1, 2.5, null] });
    assert.equal(r.result.status, 'ok');
    assert.equal(typeof r.result.timestamp, 'number');

    r = await w.call(4, 'compute', { operation: 'add', a: 5, b: 3 });
    assert.deepStrictEqual({ ...r.result, timestamp: 0 }, { status: 'ok', operation: 'add', inputs: { a: 5, b: 3 }, result: 8, timestamp: 0 });
    const ops = [
      ['subtract', 5, 3, 2], ['multiply', 5, 3, 15], ['divide', 5, 2, 2.5], ['power', 2, 10, 1024], ['sqrt', 16, 0, 4],
    ];
    let id = 10;
    for (const [operation, a, b, expected] of ops) {
      r = await w.call(id++, 'compute', { operation, a, b });
      assert.equal(r.result.result, expected, operation);
    }
    r = await w.call(id++, 'compute', {});
    assert.deepStrictEqual([r.result.operation, r.result.inputs, r.result.result], ['add', { a: 0, b: 0 }, 0]);
    for (const [args, message] of [
      [{ operation: 'divide', a: 1, b: 0 }, 'Division by zero'],
      [{ operation: 'sqrt', a: -4 }, 'Square root of negative number'],
      [{ operation: 'modulo', a: 1, b: 2 }, 'Unsupported operation: modulo'],
    ]) {
      r = await w.call(id++, 'compute', args);
      assert.equal(r.success, false);
      assert.equal(r.error.type, 'Error');
      assert.equal(r.error.message, message);
      assert.equal(typeof r.error.traceback, 'string');
    }

    r = await w.call(id++, 'random', { type: 'integer', min: 1, max: 3 });
    assert.ok([1, 2, 3].includes(r.result.value));
    assert.deepStrictEqual(r.result.parameters, { type: 'integer', min: 1, max: 3 });
    assert.equal(r.result.type, 'integer');
    r = await w.call(id++, 'random', {});
    assert.equal(r.result.type, 'uniform');
    assert.ok(r.result.value >= 0 && r.result.value < 1);
    r = await w.call(id++, 'random', { type: 'normal', mean: 10, std: 0 });
    assert.equal(r.result.value, 10);
    r = await w.call(id++, 'random', { type: 'weird' });
    assert.equal(r.error.type, 'Error');

    const handledBeforeInfo = 4 + (id - 10);
    r = await w.call(id++, 'info', {});
    assert.equal(r.result.status, 'ok');
    assert.deepStrictEqual(r.result.bridge_info.supported_commands, ['ping', 'echo', 'compute', 'info', 'random']);
    assert.equal(r.result.bridge_info.name, 'snakepit-node');
    assert.equal(typeof r.result.bridge_info.uptime, 'number');
    assert.equal(r.result.bridge_info.total_requests, handledBeforeInfo + 1);
    assert.equal(r.result.system_info.pid, w.child.pid);

    r = await w.call(id++, 'frobnicate', {});
    assert.deepStrictEqual(r.error, { type: 'UnknownCommand', message: 'Unknown command: frobnicate' });

    // A garbage frame gets a ProtocolError with id 0, and the worker serves on.
    w.sendRaw(Buffer.from([0, 0, 0, 3, 0xc1, 0xff, 0x7b]));
    r = await w.reply(0);
    assert.equal(r.error.type, 'ProtocolError');
    r = await w.call(id++, 'ping', { health_check: true });
    assert.equal(r.result.status, 'ok');

    // SIGINT is not declared by the generic worker: it must not kill it.
    w.child.kill('SIGINT');
    await sleep(100);
    r = await w.call(id++, 'echo', { still: 'alive' });
    assert.deepStrictEqual(r.result.echoed, { still: 'alive' });

    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  });

  test(`example worker (${codec}): prints go to stderr, streaming, host calls, errors`, async (t) => {
    const w = new WorkerProcess(EXAMPLE_WORKER, { codec, env: { SNAKEPIT_WORKER_ID: 'pool_worker_7_ab' } });
    t.after(() => w.kill());
    const hello = await w.hello();
    assert.equal(hello.capabilities.sigint, true);
    assert.equal(hello.capabilities.max_concurrency, 4);

    let r = await w.call(1, 'print', { text: 'ZEBRA' });
    assert.deepStrictEqual(r.result, { printed: true });
    // stdout carried only frames (checked by close()); the prints are on stderr.
    await sleep(50);
    for (const line of ['loading the example worker', 'console.log says ZEBRA', 'console.info says ZEBRA',
      'console.debug says ZEBRA', 'process.stdout.write says ZEBRA']) {
      assert.ok(w.stderr.includes(line), `${line} not on stderr:\n${w.stderr}`);
    }

    w.request(2, 'tokens', { text: 'Paris is nice' }, { stream: true });
    const chunks = [];
    for (let i = 0; i < 3; i++) chunks.push(await w.next((f) => f.type === 'chunk' && f.id === 2));
    assert.deepStrictEqual(chunks.map((c) => c.data.token), ['Paris', 'is', 'nice']);
    assert.deepStrictEqual((await w.reply(2)).result, { count: 3 });

    // A fake host keeps the session store.
    const store = new Map();
    w.request(3, 'remember', { key: 'model', value: { name: 'gpt', size: 3 } }, { session_id: 'user_123' });
    for (let i = 0; i < 3; i++) {
      const call = await w.next((f) => f.type === 'host_call');
      assert.equal(call.request_id, 3);
      let result = null;
      if (call.function === 'session.set') store.set(call.args.key, call.args.value);
      else if (call.function === 'session.get') result = store.get(call.args.key) ?? null;
      else if (call.function === 'session.delete') result = store.delete(call.args.key);
      w.send({ type: 'host_reply', id: call.id, success: true, result });
    }
    assert.deepStrictEqual((await w.reply(3)).result, { value: { name: 'gpt', size: 3 }, existed: true });

    w.request(4, 'host', { function: 'no.such', args: { x: 1 } });
    const call = await w.next((f) => f.type === 'host_call');
    assert.deepStrictEqual([call.function, call.args, call.request_id], ['no.such', { x: 1 }, 4]);
    w.send({ type: 'host_reply', id: call.id, success: false, error: { type: 'UnknownFunction', message: 'no host function named no.such' } });
    r = await w.reply(4);
    assert.deepStrictEqual([r.success, r.error.type, r.error.message], [false, 'UnknownFunction', 'no host function named no.such']);

    r = await w.call(5, 'boom', {});
    assert.equal(r.success, false);
    assert.equal(r.error.type, 'ModelError');
    assert.equal(r.error.message, 'model exploded');
    assert.match(r.error.traceback, /example_worker\.js/);

    const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    r = await w.call(6, 'context', {}, { session_id: 's9', traceparent: tp, stream: true, timeout_ms: 1000 });
    assert.deepStrictEqual(r.result, { request_id: 6, session_id: 's9', worker_id: 'pool_worker_7_ab', traceparent: tp, stream: true });

    if (codec === 'msgpack') {
      r = await w.call(7, 'bytes', { hex: '0001feff' });
      assert.ok(r.result instanceof Uint8Array);
      assert.equal(Buffer.from(r.result).toString('hex'), '0001feff');
    }

    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
    assert.ok(!w.stderr.includes('Error:'), w.stderr);
  });

  test(`example worker (${codec}): cancel frames and SIGINT cancel a running call, the worker serves on`, async (t) => {
    const w = new WorkerProcess(EXAMPLE_WORKER, { codec });
    t.after(() => w.kill());
    await w.hello();

    w.request(1, 'slow', { ms: 30000 }, { stream: true });
    await w.next((f) => f.type === 'chunk' && f.id === 1);
    const started = Date.now();
    w.send({ type: 'cancel', id: 1 });
    let r = await w.reply(1);
    assert.deepStrictEqual(r.error, { type: 'Cancelled', message: 'request 1 was cancelled' });
    assert.ok(Date.now() - started < 2000);

    w.request(2, 'slow', { ms: 30000 }, { stream: true });
    await w.next((f) => f.type === 'chunk' && f.id === 2);
    w.child.kill('SIGINT');
    r = await w.reply(2);
    assert.equal(r.error.type, 'Cancelled');

    // SIGINT between calls is ignored.
    w.child.kill('SIGINT');
    await sleep(100);
    r = await w.call(3, 'slow', { ms: 1 });
    assert.deepStrictEqual(r.result, { slept: 1 });
    assert.equal(w.frames.filter((f) => f.id === 1 || f.id === 2).length, 0);

    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  });
}

test('EOF while a call runs: the call finishes and replies, then the worker exits 0', async (t) => {
  const w = new WorkerProcess(EXAMPLE_WORKER);
  t.after(() => w.kill());
  await w.hello();
  w.request(1, 'slow', { ms: 200 });
  await sleep(20);
  w.child.stdin.end();
  assert.deepStrictEqual((await w.reply(1)).result, { slept: 200 });
  assert.deepStrictEqual(await w.exited, { code: 0, signal: null });
});

test('SIGTERM: the worker exits 0', async (t) => {
  const w = new WorkerProcess(GENERIC_WORKER);
  t.after(() => w.kill());
  await w.hello();
  w.child.kill('SIGTERM');
  assert.deepStrictEqual(await w.exited, { code: 0, signal: null });
});

test('an unknown codec makes the worker fail at once with a clear message', async () => {
  const w = new WorkerProcess(GENERIC_WORKER, { env: { SNAKEPIT_CODEC: 'yaml' } });
  const { code } = await w.exited;
  assert.equal(code, 1);
  assert.match(w.stderr, /unknown codec "yaml"/);
});

test('without @msgpack/msgpack the msgpack codec names the package to install', () => {
  // A copy of the bridge where no node_modules can be found.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-no-msgpack-'));
  try {
    fs.mkdirSync(path.join(dir, 'lib'));
    for (const f of fs.readdirSync(path.join(BRIDGE_DIR, 'lib'))) {
      fs.copyFileSync(path.join(BRIDGE_DIR, 'lib', f), path.join(dir, 'lib', f));
    }
    fs.copyFileSync(path.join(BRIDGE_DIR, 'package.json'), path.join(dir, 'package.json'));
    fs.copyFileSync(path.join(BRIDGE_DIR, 'generic_worker.js'), path.join(dir, 'generic_worker.js'));
    const env = { ...process.env, SNAKEPIT_CODEC: 'msgpack' };
    delete env.NODE_PATH;
    let stderr = '';
    try {
      execFileSync(process.execPath, [path.join(dir, 'generic_worker.js')], { cwd: dir, env, stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      stderr = err.stderr.toString();
      assert.equal(err.status, 1);
    }
    assert.match(stderr, /npm install @msgpack\/msgpack/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
