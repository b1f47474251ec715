'use strict';

// Outside review, round 7: SNAKEPIT_MAX_CONCURRENCY read strictly, an empty
// worker id from the init ping, and the npm package holding every file the
// README tells users to run or import (the ES-module launcher included),
// checked by running workers from the packed files. Each test names the
// promise it checks. Bounds on waiting only turn hangs into failures;
// nothing is timed for speed.

const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const wire = require('../lib/wire');
const { Worker } = require('../lib');
const { BRIDGE_DIR, WorkerProcess } = require('./helpers');

const WAIT_MS = 30000; // generous: a loaded 2-core machine

function haveMsgpack() {
  try {
    wire.getCodec('msgpack').encodeFrame({ a: 1 });
    return true;
  } catch (_) {
    return false;
  }
}
const CODECS = haveMsgpack() ? ['json', 'msgpack'] : ['json'];

// A temporary directory holding `files` ({name: source}), removed after `t`.
function tempDir(t, files = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-node-round7-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const [name, source] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), source);
  }
  return dir;
}

function start(t, script, options) {
  const w = new WorkerProcess(script, options);
  t.after(() => w.kill());
  return w;
}

// A call and its reply, waited for generously (the helper's own call()
// gives up after 5 s, which a fork on a loaded machine may take).
function call(w, id, command, args = {}, extra = {}) {
  w.request(id, command, args, extra);
  return w.reply(id, WAIT_MS);
}

// Waits until the worker's stderr matches `pattern`: the exit of a child
// may be seen before the last of its stderr is read.
async function stderrShows(w, pattern) {
  const deadline = Date.now() + WAIT_MS;
  while (!pattern.test(w.stderr)) {
    if (Date.now() > deadline) assert.match(w.stderr, pattern);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function bounded(promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: nothing within ${WAIT_MS} ms`)), WAIT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Runs `fn` with SNAKEPIT_MAX_CONCURRENCY set to `value` in this process.
function withConcurrencyVar(value, fn) {
  const before = process.env.SNAKEPIT_MAX_CONCURRENCY;
  process.env.SNAKEPIT_MAX_CONCURRENCY = value;
  try {
    return fn();
  } finally {
    if (before === undefined) delete process.env.SNAKEPIT_MAX_CONCURRENCY;
    else process.env.SNAKEPIT_MAX_CONCURRENCY = before;
  }
}

// ---------------------------------------------------------------------------
// SNAKEPIT_MAX_CONCURRENCY

// README: maxConcurrency is "a whole number ... a value below 1, not whole,
// or not a number is a RangeError"; "SNAKEPIT_MAX_CONCURRENCY overrides
// it". The variable was read with Number(), so `1e3` declared 1000 calls,
// ` 4` and `0x10` passed as 4 and 16, and `0` or `-2` silently gave the
// option or the default. Now it takes decimal digits only, as
// SNAKEPIT_MAX_FRAME_SIZE is read by every bridge, and anything else is a
// RangeError that names the variable.
test('SNAKEPIT_MAX_CONCURRENCY other than decimal digits of at least 1 is a RangeError naming it', () => {
  for (const bad of ['1e3', ' 4', '4 ', '0x10', '4.0', '+4', '-2', '0', '000', 'four', '٤', '1_000', 'Infinity']) {
    withConcurrencyVar(bad, () => {
      assert.throws(
        () => new Worker({ maxConcurrency: 2 }),
        (err) => err instanceof RangeError && /SNAKEPIT_MAX_CONCURRENCY/.test(err.message) &&
          err.message.includes(JSON.stringify(bad)),
        JSON.stringify(bad)
      );
    });
  }
  for (const [good, want] of [['4', 4], ['007', 7], ['99999999999', 4294967295]]) {
    withConcurrencyVar(good, () => assert.equal(new Worker({ maxConcurrency: 2 }).maxConcurrency, want, good));
  }
  // Empty is absent, as SNAKEPIT_WORKER_ID and SNAKEPIT_CODEC are.
  withConcurrencyVar('', () => {
    assert.equal(new Worker({ maxConcurrency: 2 }).maxConcurrency, 2);
    assert.equal(new Worker().maxConcurrency, 16);
  });
});

// README: maxConcurrency "a value below 1, not whole, or not a number is a
// `RangeError`". A Symbol or an object without a primitive value made a
// TypeError instead, from building the message (`${n}`), and a BigInt's
// message read `not 3`, as if 3 were refused. Now every such value is a
// RangeError that shows the value as it is.
test('maxConcurrency that is a Symbol, a BigInt or an object is a RangeError showing it', () => {
  for (const [bad, shownAs] of [[Symbol('s'), 'Symbol(s)'], [3n, '3n'], [Object.create(null), '[Object: null prototype] {}'],
    [{ valueOf: () => 3 }, '{ valueOf: [Function: valueOf] }']]) {
    assert.throws(() => new Worker({ maxConcurrency: bad }), {
      name: 'RangeError',
      message: `maxConcurrency must be a whole number of at least 1, not ${shownAs}`,
    });
  }
});

// Through a real worker: one started with a bad variable never says hello.
// It exits 1 with the message on stderr (which the pool puts in its start
// error), and writes nothing into the frame stream; a good one declares
// the variable's number.
test('a worker started with SNAKEPIT_MAX_CONCURRENCY=1e3 exits 1 saying why; =3 declares 3', async (t) => {
  const dir = tempDir(t, {
    'worker.js': "const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: { hi: () => 'hi' } }).run();\n",
  });
  const script = path.join(dir, 'worker.js');
  const bad = start(t, script, { env: { SNAKEPIT_MAX_CONCURRENCY: '1e3' } });
  const bytes = [];
  bad.child.stdout.on('data', (chunk) => bytes.push(chunk));
  bad.child.stdin.end();
  assert.deepEqual(await bounded(bad.exited, 'the exit'), { code: 1, signal: null });
  assert.equal(Buffer.concat(bytes).length, 0, 'wrote to stdout');
  await stderrShows(bad, /SNAKEPIT_MAX_CONCURRENCY must be a whole number of at least 1 in decimal digits, not "1e3"/);

  const good = start(t, script, { env: { SNAKEPIT_MAX_CONCURRENCY: '3' } });
  assert.equal((await good.next((f) => f.type === 'hello', WAIT_MS)).capabilities.max_concurrency, 3);
  assert.deepEqual(await good.close(), { code: 0, signal: null });
});

// ---------------------------------------------------------------------------
// The worker id

// README: ctx.workerId is "from SNAKEPIT_WORKER_ID, or from the pool's init
// ping; null before either". An empty SNAKEPIT_WORKER_ID counts as none (as
// in the Python and Ruby bridges), but an empty worker_id in the init ping
// was taken as the id: ctx.workerId became '', which is neither an id nor
// null, and a later init ping's real id was still taken after it.
test('an init ping with an empty worker_id leaves ctx.workerId null; a real one is then taken', async (t) => {
  const dir = tempDir(t, {
    'worker.js':
      "const { Worker } = require('snakepit-bridge');\n" +
      'new Worker({ commands: { id: (args, ctx) => ({ workerId: ctx.workerId, worker_id: ctx.worker_id }) } }).run();\n',
  });
  const w = start(t, path.join(dir, 'worker.js'), { env: { SNAKEPIT_WORKER_ID: '' } });
  await w.next((f) => f.type === 'hello', WAIT_MS);
  let r = await call(w, 1, 'ping', { initialization: true, worker_id: '' });
  assert.equal(r.success, true);
  r = await call(w, 2, 'id');
  assert.deepEqual(r.result, { workerId: null, worker_id: null });
  await call(w, 3, 'ping', { initialization: true, worker_id: 'pool_worker_7' });
  r = await call(w, 4, 'id');
  assert.deepEqual(r.result, { workerId: 'pool_worker_7', worker_id: 'pool_worker_7' });
  assert.deepEqual(await w.close(), { code: 0, signal: null });
});

// ---------------------------------------------------------------------------
// The npm package

// The files the README and package.json tell users to run or import:
// the package's main and types, the generic worker (also the `bin`), and
// the ES-module launcher and its hooks ("the pool starts it through the
// bridge's esm_main.mjs"). `files` left the launcher out, so a package
// installed from npm could not run an ES module worker as the README says.
test('npm pack holds the main, the types, the generic worker and the ES-module launcher', () => {
  const packed = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
    cwd: BRIDGE_DIR,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  }));
  const files = new Set(packed[0].files.map((f) => f.path));
  const pkg = JSON.parse(fs.readFileSync(path.join(BRIDGE_DIR, 'package.json'), 'utf8'));
  const wanted = [
    pkg.main,
    pkg.types,
    ...Object.values(pkg.bin),
    'esm_main.mjs',
    'esm_hooks.mjs',
    'README.md',
    'LICENSE-MIT',
    'LICENSE-APACHE',
    'package.json',
  ];
  for (const target of Object.values(pkg.exports['.'])) wanted.push(target.replace(/^\.\//, ''));
  // Every file of lib/ and types/ that the package's own code loads.
  for (const dir of ['lib', 'types']) {
    for (const name of fs.readdirSync(path.join(BRIDGE_DIR, dir))) {
      if (/\.(js|d\.ts)$/.test(name)) wanted.push(`${dir}/${name}`);
    }
  }
  for (const file of wanted) assert.ok(files.has(file), `the npm package lacks ${file}`);
});

// The same, by use: the packed files, unpacked as `npm install` would put
// them in node_modules/snakepit-bridge, run a CommonJS worker that requires
// the package, the generic worker, and an ES module worker through the
// packed launcher, each answering a call.
test('workers run from the packed package: CommonJS, the generic worker, and an ES module', async (t) => {
  const dir = tempDir(t, {
    'app/worker.js': "const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: { hi: () => 'cjs' } }).run();\n",
    'app/worker.mjs':
      "import { Worker, genericCommands } from 'snakepit-bridge';\n" +
      "new Worker({ commands: { ...genericCommands(), hi: () => 'esm' } }).run();\n",
  });
  const out = execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], {
    cwd: BRIDGE_DIR,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tarball = path.join(dir, JSON.parse(out)[0].filename);
  const installed = path.join(dir, 'app', 'node_modules', 'snakepit-bridge');
  fs.mkdirSync(installed, { recursive: true });
  const untar = spawnSync('tar', ['-xzf', tarball, '-C', installed, '--strip-components=1'], { encoding: 'utf8' });
  assert.equal(untar.status, 0, untar.stderr);
  // No NODE_PATH: only the installed copy can be found.
  const env = { NODE_PATH: '' };
  const runs = [
    ['CommonJS', path.join(dir, 'app', 'worker.js'), [], 'cjs'],
    ['generic', path.join(installed, 'generic_worker.js'), [], null],
    ['ES module', path.join(installed, 'esm_main.mjs'), [path.join(dir, 'app', 'worker.mjs')], 'esm'],
  ];
  for (const [kind, script, first, want] of runs) {
    const w = start(t, script, { env, args: [...first, '--mode', 'pool-worker'] });
    const hello = await w.next((f) => f.type === 'hello', WAIT_MS);
    assert.equal(hello.protocol, 1, kind);
    if (want !== null) {
      assert.equal((await call(w, 1, 'hi')).result, want, kind);
    } else {
      const r = await call(w, 1, 'ping');
      assert.equal(r.result.bridge_type, 'generic_javascript', kind);
    }
    const close = await w.close();
    assert.deepEqual(close, { code: 0, signal: null }, `${kind}: ${w.stderr}`);
  }
});

// ---------------------------------------------------------------------------
// Host call arguments holding NaN, an infinity or bytes

// docs/protocol.md, section 3: NaN and infinities "In a host call's
// arguments ... are refused instead: the host call fails ..., as for bytes,
// so that no `null` is stored in a session in place of the number a
// handler gave"; docs/bridges.md: "Bytes a handler passes to the host (in
// a host call's arguments ...) fail that host call". README: "`callHost`
// arguments that cannot be encoded make it reject; nothing is sent". Under
// JSON the bridge wrote NaN as null and a Buffer as {type, data} (as
// JSON.stringify does), so `ctx.session.set('score', NaN)` made the pool
// store null. Now such a host call rejects with an EncodeError and nothing
// is sent, as the Python bridge's JSON encoder refuses them (under
// MessagePack the pool answers InvalidArgument); a result keeps the
// documented null. Only the host calls that have a JSON form are sent.
test('JSON: a host call whose arguments hold NaN, an infinity or bytes rejects and sends nothing', async (t) => {
  const dir = tempDir(t, {
    'worker.js':
      "const { Worker } = require('snakepit-bridge');\n" +
      'new Worker({ commands: {\n' +
      '  async store(args, ctx) {\n' +
      '    const out = {};\n' +
      "    for (const [name, value] of [['nan', NaN], ['inf', Infinity], ['neg', -Infinity],\n" +
      "      ['deep', { list: [1, NaN] }], ['boxed', new Number(Infinity)], ['json', { toJSON: () => NaN }],\n" +
      "      ['buffer', Buffer.from('ab')], ['u8', { b: new Uint8Array([1]) }], ['f64', [new Float64Array(1)]],\n" +
      "      ['ab', new ArrayBuffer(2)], ['dv', new DataView(new ArrayBuffer(2))], ['jsonBuffer', { toJSON: () => Buffer.from('a') }],\n" +
      "      ['plain', { n: 1.5, list: [0, -0, 2 ** 53 - 1], s: 'x' }]]) {\n" +
      "      try { await ctx.session.set('k', value); out[name] = 'sent'; }\n" +
      '      catch (err) { out[name] = err.name; }\n' +
      '    }\n' +
      "    out.after = await ctx.session.get('k');\n" +
      '    return { out, result: [NaN, Infinity] };\n' +
      '  },\n' +
      '} }).run();\n',
  });
  const w = start(t, path.join(dir, 'worker.js'));
  await w.next((f) => f.type === 'hello', WAIT_MS);
  w.request(1, 'store', {}, { session_id: 's' });
  // The one argument that has a JSON form is sent as it is.
  const set = await w.next((f) => f.type === 'host_call', WAIT_MS);
  assert.deepEqual([set.function, set.args], ['session.set', { key: 'k', value: { n: 1.5, list: [0, 0, 2 ** 53 - 1], s: 'x' } }]);
  w.send({ type: 'host_reply', id: set.id, success: true, result: null });
  const get = await w.next((f) => f.type === 'host_call', WAIT_MS);
  assert.deepEqual([get.function, get.args], ['session.get', { key: 'k' }]);
  w.send({ type: 'host_reply', id: get.id, success: true, result: 5 });
  const reply = await w.reply(1, WAIT_MS);
  assert.deepEqual(reply.result, {
    out: { nan: 'EncodeError', inf: 'EncodeError', neg: 'EncodeError', deep: 'EncodeError', boxed: 'EncodeError',
      json: 'EncodeError', buffer: 'EncodeError', u8: 'EncodeError', f64: 'EncodeError', ab: 'EncodeError',
      dv: 'EncodeError', jsonBuffer: 'EncodeError', plain: 'sent', after: 5 },
    result: [null, null],
  });
  assert.deepEqual(w.frames.filter((f) => f.type === 'host_call'), []);
  assert.deepEqual(await w.close(), { code: 0, signal: null });
});

// ---------------------------------------------------------------------------
// Threads and child processes that print

// README, "Stdout and stdin belong to the protocol": a `worker_threads`
// thread "needs no care: what it prints goes to stderr too", and a child of
// `child_process.fork()` given `stdio: ['ignore', 2, 2, 'ipc']` prints to
// the log, not into the frames. (A fork with its defaults inherits
// descriptor 1, the pipe to the pool, and its first print breaks the frame
// stream: Node cannot prevent that without native code, so the README says
// what to pass.) Every frame the pool reads stays valid, and the prints
// reach stderr, in both codecs.
test('prints of a worker_threads thread and of a fork given the README stdio reach stderr, not the frames', async (t) => {
  const dir = tempDir(t, {
    'child.js': "console.log('round7: forked child prints'); process.send('hi from child');\n",
    'worker.js':
      "const { Worker } = require('snakepit-bridge');\n" +
      "const { Worker: Thread } = require('node:worker_threads');\n" +
      "const { fork } = require('node:child_process');\n" +
      'new Worker({ commands: {\n' +
      '  thread: () => new Promise((resolve, reject) => {\n' +
      '    const source = "console.log(\'round7: thread log\'); process.stdout.write(\'round7: thread write\\\\n\');" +\n' +
      '      "console.info(\'round7: thread info\'); require(\'node:worker_threads\').parentPort.postMessage(7);";\n' +
      '    const thread = new Thread(source, { eval: true });\n' +
      "    let got = null;\n" +
      "    thread.on('message', (m) => { got = m; });\n" +
      "    thread.on('error', reject);\n" +
      "    thread.on('exit', () => resolve(got));\n" +
      '  }),\n' +
      '  forked: () => new Promise((resolve, reject) => {\n' +
      "    const child = fork(require('node:path').join(__dirname, 'child.js'), [], { stdio: ['ignore', 2, 2, 'ipc'] });\n" +
      "    let got = null;\n" +
      "    child.on('message', (m) => { got = m; });\n" +
      "    child.on('error', reject);\n" +
      "    child.on('close', (code) => resolve({ code, got }));\n" +
      '  }),\n' +
      '} }).run();\n',
  });
  for (const codec of CODECS) {
    const w = start(t, path.join(dir, 'worker.js'), { codec });
    await w.next((f) => f.type === 'hello', WAIT_MS);
    assert.equal((await call(w, 1, 'thread')).result, 7, codec);
    assert.deepEqual((await call(w, 2, 'forked')).result, { code: 0, got: 'hi from child' }, codec);
    assert.equal((await call(w, 3, 'ping')).success, true, codec);
    assert.deepEqual(await w.close(), { code: 0, signal: null }, codec);
    for (const line of ['thread log', 'thread write', 'thread info', 'forked child prints']) {
      await stderrShows(w, new RegExp(`round7: ${line}`));
    }
  }
});

// ---------------------------------------------------------------------------
// The codec's name

// README: `codec` is "`json` or `msgpack`", from the option or
// SNAKEPIT_CODEC. The Python and Ruby bridges read the name without regard
// to case or the spaces around it; this one refused ` msgpack` and `json `,
// and a name that is no string (`codec: 5`) failed with a TypeError about
// `toLowerCase` instead of saying the codec is unknown. A worker started
// with such a codec exits 1 naming it, before any frame.
test('the codec name is read as the other bridges read it; one that is no string is an unknown codec', async (t) => {
  for (const [name, want] of [[' msgpack ', 'msgpack'], ['JSON\t', 'json'], ['  ', 'json'], [null, 'json']]) {
    if (want === 'msgpack' && !CODECS.includes('msgpack')) continue;
    assert.equal(wire.getCodec(name).name, want, JSON.stringify(name));
  }
  for (const [name, shown] of [[5, '5'], [{}, '{}'], [['json'], "[ 'json' ]"], ['yaml', '"yaml"']]) {
    assert.throws(() => wire.getCodec(name), { message: `unknown codec ${shown}: expected json or msgpack` });
  }
  const dir = tempDir(t, {
    'worker.js': "const { Worker } = require('snakepit-bridge');\nnew Worker({ codec: 5 }).run();\n",
  });
  const w = start(t, path.join(dir, 'worker.js'));
  const bytes = [];
  w.child.stdout.on('data', (chunk) => bytes.push(chunk));
  w.child.stdin.end();
  assert.deepEqual(await bounded(w.exited, 'the exit'), { code: 1, signal: null });
  assert.equal(Buffer.concat(bytes).length, 0, 'wrote to stdout');
  await stderrShows(w, /unknown codec 5: expected json or msgpack/);
  const spaced = start(t, path.join(tempDir(t, {
    'worker.js': "const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: { hi: () => 'hi' } }).run();\n",
  }), 'worker.js'), { env: { SNAKEPIT_CODEC: 'json ' } });
  await spaced.next((f) => f.type === 'hello', WAIT_MS);
  assert.equal((await call(spaced, 1, 'hi')).result, 'hi');
  assert.deepEqual(await spaced.close(), { code: 0, signal: null });
});

// ---------------------------------------------------------------------------
// Odd results, from CommonJS and ES module handlers

// README, "Errors": `EncodeError` "when a result cannot be encoded (a
// cycle, a `BigInt` in either codec ...; a getter that throws ...)", and
// "The worker serves on"; "Codecs": a Map or Set "becomes `{}` in both
// codecs", binary data travels as `bin` with MessagePack. The same
// handlers, in a CommonJS worker and in an ES module run by the launcher,
// in both codecs, give the same replies.
test('odd results give the documented replies from CommonJS and ES module workers alike', async (t) => {
  const commands =
    '{\n' +
    '  bigint: () => ({ n: 10n }),\n' +
    "  getter: () => ({ ok: 1, get bad() { throw new Error('round7 getter'); } }),\n" +
    "  collections: () => ({ map: new Map([['a', 1]]), set: new Set([1]), list: [1, 'two'] }),\n" +
    '  bytes: () => ({ b: Buffer.from([0, 255]) }),\n' +
    '  rejectsNull: async () => { throw null; },\n' +
    '}';
  const dir = tempDir(t, {
    'worker.js': `const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: ${commands} }).run();\n`,
    'worker.mjs': `import { Worker } from 'snakepit-bridge';\nnew Worker({ commands: ${commands} }).run();\n`,
  });
  const ESM_MAIN = path.join(BRIDGE_DIR, 'esm_main.mjs');
  for (const codec of CODECS) {
    for (const [kind, script, args] of [
      ['CommonJS', path.join(dir, 'worker.js'), ['--mode', 'pool-worker']],
      ['ES module', ESM_MAIN, [path.join(dir, 'worker.mjs'), '--mode', 'pool-worker']],
    ]) {
      const what = `${kind}, ${codec}`;
      const w = start(t, script, { codec, args });
      await w.next((f) => f.type === 'hello', WAIT_MS);
      const bigint = await call(w, 1, 'bigint');
      assert.equal(bigint.success, false, what);
      assert.equal(bigint.error.type, 'EncodeError', what);
      const getter = await call(w, 2, 'getter');
      assert.deepEqual(getter.error, { type: 'EncodeError', message: 'the result could not be encoded: round7 getter' }, what);
      assert.deepEqual((await call(w, 3, 'collections')).result, { map: {}, set: {}, list: [1, 'two'] }, what);
      const bytes = (await call(w, 4, 'bytes')).result.b;
      if (codec === 'msgpack') assert.deepEqual(Buffer.from(bytes), Buffer.from([0, 255]), what);
      const rejected = await call(w, 5, 'rejectsNull');
      assert.deepEqual(rejected.error, { type: 'Error', message: 'null' }, what);
      assert.equal((await call(w, 6, 'ping')).result.status, 'ok', what);
      assert.deepEqual(await w.close(), { code: 0, signal: null }, what);
    }
  }
});

// ---------------------------------------------------------------------------
// An ES module without an extension

// README, "Codecs": `@msgpack/msgpack` "is found beside the bridge, on
// `NODE_PATH`, or in a `node_modules` next to your script or the working
// directory". The pool runs an extensionless script in a package of
// "type": "module" as an ES module, through the launcher (Node runs it as
// one). Beside such a script the package was not looked for, since only
// arguments ending in .js, .mjs or .cjs were taken for the script: the
// worker exited saying the package was missing, while the same file named
// worker.mjs started. Here the bridge is a copy without node_modules, and
// the working directory has none either.
test('an extensionless ES module worker finds @msgpack/msgpack next to itself', { skip: !CODECS.includes('msgpack') }, async (t) => {
  const dir = tempDir(t, {
    'app/package.json': '{"type": "module"}\n',
    'app/worker': "import { Worker } from 'snakepit-bridge';\nnew Worker({ commands: { hi: () => 'hi' } }).run();\n",
    'cwd/.keep': '',
  });
  const copy = path.join(dir, 'np', 'snakepit-bridge');
  for (const name of ['lib', 'package.json', 'esm_main.mjs', 'esm_hooks.mjs']) {
    fs.cpSync(path.join(BRIDGE_DIR, name), path.join(copy, name), { recursive: true });
  }
  const msgpackDir = path.dirname(require.resolve('@msgpack/msgpack/package.json', { paths: [BRIDGE_DIR] }));
  fs.cpSync(msgpackDir, path.join(dir, 'app', 'node_modules', '@msgpack', 'msgpack'), { recursive: true });
  const w = start(t, path.join(copy, 'esm_main.mjs'), {
    codec: 'msgpack',
    cwd: path.join(dir, 'cwd'),
    env: { NODE_PATH: path.join(dir, 'np') },
    args: [path.join(dir, 'app', 'worker'), '--mode', 'pool-worker'],
  });
  const hello = await w.next((f) => f.type === 'hello', WAIT_MS);
  assert.equal(hello.type, 'hello', w.stderr);
  assert.equal((await call(w, 1, 'hi')).result, 'hi');
  assert.deepEqual(await w.close(), { code: 0, signal: null });
});
