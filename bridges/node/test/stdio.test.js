'use strict';

// README, "Stdout and stdin belong to the protocol": user code gets a
// process.stdout that writes to stderr and whose end() or destroy() ends
// only itself, and a process.stdin that is empty and ends at once, so that
// neither closing stdout nor reading, pausing or closing stdin (as
// command-line code and prompt libraries do) touches the worker's log or
// its frames. Against real worker processes over pipes.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');

const { BRIDGE_DIR, WorkerProcess, scriptDir, until } = require('./helpers');

const SCRIPT = `
const { Worker } = require('snakepit-bridge');

const worker = new Worker({
  commands: {
    print(args) {
      process.stdout.write('write ' + args.text + '\\n');
      console.log('log ' + args.text);
      process.stdout.write('write again ' + args.text + '\\n');
      return { stdoutFd: process.stdout.fd };
    },
    endStdout() {
      const out = process.stdout;
      out.end('last words\\n');
      return { ended: out.writableEnded, stderrEnded: process.stderr.writableEnded, fresh: process.stdout !== out };
    },
    destroyStdout() {
      process.stdout.destroy();
      return { stderrDestroyed: process.stderr.destroyed };
    },
    readStdin() {
      // Everything process.stdin gives, as a tool reading its input does.
      return new Promise((resolve) => {
        let text = '';
        process.stdin.setEncoding('utf8');
        process.stdin.on('data', (chunk) => { text += chunk; });
        process.stdin.on('end', () => resolve({ text, isTTY: process.stdin.isTTY === true }));
      });
    },
    readlinePrompt() {
      // A prompt library: a readline interface over process.stdin, which
      // closes when the input ends.
      const rl = require('readline').createInterface({ input: process.stdin });
      return new Promise((resolve) => {
        const lines = [];
        rl.on('line', (line) => lines.push(line));
        rl.on('close', () => resolve({ lines }));
      });
    },
    readlineClosed() {
      require('readline').createInterface({ input: process.stdin }).close();
      return 'closed';
    },
    pauseStdin() {
      process.stdin.pause();
      process.stdin.unref();
      return 'paused';
    },
    echo: (args) => args,
  },
});

worker.run();
`;

function start(t, codec = 'json') {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-node-stdio-');
  const w = new WorkerProcess(script, { codec });
  t.after(() => w.kill());
  return w;
}

for (const codec of ['json', 'msgpack']) {
  test(`ending or destroying process.stdout in a handler leaves stderr and later prints alone (${codec})`, async (t) => {
    const w = start(t, codec);
    await w.hello();
    const r1 = await w.call(1, 'print', { text: 'one' });
    assert.equal(r1.result.stdoutFd, 2, JSON.stringify(r1));
    const r2 = await w.call(2, 'endStdout');
    assert.deepStrictEqual(r2.result, { ended: true, stderrEnded: false, fresh: true });
    assert.equal((await w.call(3, 'print', { text: 'two' })).success, true);
    const r4 = await w.call(4, 'destroyStdout');
    assert.deepStrictEqual(r4.result, { stderrDestroyed: false });
    assert.equal((await w.call(5, 'print', { text: 'three' })).success, true);
    await until(() => w.stderr.includes('write again three\n'), 'the last print reached stderr');
    const lines = w.stderr.split('\n');
    // In order, line by line, console's lines and process.stdout's alike.
    const want = [];
    for (const text of ['one', 'two', 'three']) want.push(`write ${text}`, `log ${text}`, `write again ${text}`);
    const seen = lines.filter((l) => want.includes(l) || l === 'last words');
    assert.deepStrictEqual(seen, [...want.slice(0, 3), 'last words', ...want.slice(3)], w.stderr);
    // close() fails the test if stdout carried anything but valid frames.
    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  });

  test(`process.stdin is empty and ends at once; reading, pausing or closing it leaves the frames alone (${codec})`, async (t) => {
    const w = start(t, codec);
    await w.hello();
    // Requests written while a handler reads process.stdin reach the worker,
    // not the handler.
    w.request(1, 'readStdin');
    w.request(2, 'echo', { next: 'frame' });
    assert.deepStrictEqual((await w.reply(1)).result, { text: '', isTTY: false });
    assert.deepStrictEqual((await w.reply(2)).result, { next: 'frame' });
    assert.deepStrictEqual((await w.call(3, 'readlinePrompt')).result, { lines: [] });
    assert.equal((await w.call(4, 'readlineClosed')).result, 'closed');
    assert.equal((await w.call(5, 'echo', { after: 'readline' })).success, true);
    assert.equal((await w.call(6, 'pauseStdin')).result, 'paused');
    assert.deepStrictEqual((await w.call(7, 'echo', { after: 'pause' })).result, { after: 'pause' });
    // Reading it again after all that: still empty, and the worker serves on.
    assert.deepStrictEqual((await w.call(8, 'readStdin')).result, { text: '', isTTY: false });
    assert.deepStrictEqual((await w.call(9, 'echo', { last: true })).result, { last: true });
    // The end of the real stdin still stops the worker.
    assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
  });
}

// README: "Elsewhere (tests, tools) loading the bridge has no side effects";
// run() protects stdout and stdin then.
test('requiring the bridge outside a pool leaves process.stdin and process.stdout alone', () => {
  const code = `
    const stdin = process.stdin;
    const stdout = process.stdout;
    require(${JSON.stringify(BRIDGE_DIR)});
    process.stderr.write(JSON.stringify({ stdin: process.stdin === stdin, stdout: process.stdout === stdout }));
  `;
  const env = { ...process.env };
  delete env.SNAKEPIT_PROTOCOL;
  const r = spawnSync(process.execPath, ['-e', code], { env, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  assert.equal(r.status, 0, r.stderr);
  assert.deepStrictEqual(JSON.parse(r.stderr), { stdin: true, stdout: true });
});
