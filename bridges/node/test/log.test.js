'use strict';

// README.md, the context: "`ctx.log.info(...)` (also `debug`, `warn`,
// `error`) | a line on stderr, tagged with worker and request id". Against
// a real worker process whose id comes from SNAKEPIT_WORKER_ID.

const test = require('node:test');
const assert = require('node:assert/strict');

const { WorkerProcess, scriptDir } = require('./helpers');

const SCRIPT = `
const { Worker } = require('snakepit-bridge');

new Worker({
  commands: {
    say(args, ctx) {
      ctx.log.info('hello', args.n);
      return null;
    },
  },
}).run();
`;

test('ctx.log.info writes one stderr line with the worker id, the request id and the message', async (t) => {
  const { script } = scriptDir(t, SCRIPT, 'snakepit-node-log-');
  const w = new WorkerProcess(script, { env: { SNAKEPIT_WORKER_ID: 'pool_worker_3_c4' } });
  t.after(() => w.kill());
  await w.hello();
  const r = await w.call(4711, 'say', { n: 42 });
  assert.equal(r.success, true);
  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });

  const lines = w.stderr.split('\n').filter((line) => line.includes('hello 42'));
  assert.equal(lines.length, 1, `stderr:\n${w.stderr}`);
  const [line] = lines;
  assert.ok(line.includes('pool_worker_3_c4'), `no worker id in ${JSON.stringify(line)}`);
  assert.match(line, /\b4711\b/, `no request id in ${JSON.stringify(line)}`);
  assert.ok(line.endsWith('hello 42'), `the message is not the line's end: ${JSON.stringify(line)}`);
  // The message goes to stderr only; close() checked that stdout held frames only.
});
