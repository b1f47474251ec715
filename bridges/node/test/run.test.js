'use strict';

// docs/bridges.md and README.md, on worker.run(): it "exits with 0 once
// stdin is closed and the running calls have replied"; "`worker.run({ exit:
// false })` resolves instead of exiting on EOF". Against real worker
// processes whose script goes on after run() resolves.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { WorkerProcess, scriptDir, until } = require('./helpers');

// RUN_OPTIONS (JSON) is what run() is given, if set. After run() resolves
// the script writes 'after' to stderr and sets its exit code to 7.
const SCRIPT = `
const fs = require('node:fs');
const { Worker } = require('snakepit-bridge');

const worker = new Worker({
  commands: {
    async block(args, ctx) {
      // Tells the test when the worker has read the end of stdin: a host
      // call nobody answers fails then (process.stdin is not the bridge's
      // input, so its 'end' says nothing).
      ctx.callHost('never.answered', {}).catch((err) => {
        if (err.type === 'HostUnavailable') process.stderr.write('stdin: end\\n');
      });
      process.stderr.write('block: started\\n');
      while (!fs.existsSync(args.until)) await new Promise((r) => setTimeout(r, 10));
      process.stderr.write('block: released\\n');
      return 'released';
    },
  },
});

(async () => {
  const options = process.env.RUN_OPTIONS ? JSON.parse(process.env.RUN_OPTIONS) : undefined;
  await worker.run(options);
  process.stderr.write('after\\n');
  process.exitCode = 7;
})();
`;


// Starts the script with `options` for run(), has a call running when
// the worker reads the end of stdin, lets it finish only then, and returns the call's reply
// and how the process ended.
async function closeWhileACallRuns(t, codec, options) {
  const { dir, script } = scriptDir(t, SCRIPT, 'snakepit-node-run-');
  const env = options === undefined ? {} : { RUN_OPTIONS: JSON.stringify(options) };
  const w = new WorkerProcess(script, { codec, env });
  t.after(() => w.kill());
  await w.hello();
  const release = path.join(dir, 'release');
  w.request(1, 'block', { until: release });
  await until(() => w.stderr.includes('block: started'), 'the call started');
  w.child.stdin.end();
  await until(() => w.stderr.includes('stdin: end'), 'the worker read EOF');
  fs.writeFileSync(release, '');
  const reply = await w.reply(1);
  const { code, signal } = await w.close();
  return { w, reply, code, signal };
}

for (const codec of ['json', 'msgpack']) {
  test(`run({ exit: false }) resolves on EOF once the running calls replied, and the script goes on (${codec})`, async (t) => {
    const { w, reply, code, signal } = await closeWhileACallRuns(t, codec, { exit: false });
    assert.equal(reply.result, 'released', JSON.stringify(reply));
    assert.equal(signal, null, w.stderr);
    assert.equal(code, 7, `the exit code the script set after run() resolved; stderr:\n${w.stderr}`);
    const lines = w.stderr.split('\n');
    assert.ok(lines.includes('after'), w.stderr);
    // run() resolved only after the call that was running at EOF ended.
    assert.ok(w.stderr.indexOf('block: released') < w.stderr.indexOf('after'), w.stderr);
  });

  test(`run() without options exits 0 on EOF once the running calls replied, never resolving (${codec})`, async (t) => {
    const { w, reply, code, signal } = await closeWhileACallRuns(t, codec, undefined);
    assert.equal(reply.result, 'released', JSON.stringify(reply));
    assert.equal(signal, null, w.stderr);
    assert.equal(code, 0, w.stderr);
    assert.ok(!w.stderr.split('\n').includes('after'), w.stderr);
  });
}
