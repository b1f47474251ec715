// For outside_failures_round6.rs: a Node worker on the bundled bridge whose
// commands do what FAILURES.md's scenarios need. `sleep` notes its token and
// pid in the directory `dir` names once it runs, and with `ignore_term`
// makes the worker ignore SIGTERM; `spawn_child` starts a `sleep` of its
// own; `flood_stderr` writes `mb` MiB to stderr without a newline.
const fs = require('fs');
const path = require('path');
const { spawn } = require('child_process');
const { Worker } = require('snakepit-bridge');

// Start-up faults, as the environment asks: ROUND6_PID_FILE gets the pid;
// ROUND6_EXIT_AT_LOAD exits with that status after a line on stderr;
// ROUND6_SLEEP_AT_LOAD_MS blocks that long before the handshake.
if (process.env.ROUND6_PID_FILE) fs.writeFileSync(process.env.ROUND6_PID_FILE, String(process.pid));
if (process.env.ROUND6_EXIT_AT_LOAD) {
  fs.writeSync(2, 'model file missing, giving up\n');
  process.exit(Number(process.env.ROUND6_EXIT_AT_LOAD));
}
if (process.env.ROUND6_SLEEP_AT_LOAD_MS) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(process.env.ROUND6_SLEEP_AT_LOAD_MS));
}

// With ROUND6_BROKEN_IF_EXISTS naming a file that exists, the script fails
// as it loads, as one whose dependency went missing does.
const broken = process.env.ROUND6_BROKEN_IF_EXISTS;
if (broken && fs.existsSync(broken)) {
  require('round6-no-such-module');
}

new Worker({
  maxConcurrency: Number(process.env.ROUND6_CONCURRENCY || 1),
  commands: {
    sleep(args) {
      if (args.ignore_term) {
        process.removeAllListeners('SIGTERM');
        process.on('SIGTERM', () => {});
      }
      if (args.dir) {
        fs.writeFileSync(path.join(args.dir, String(args.token)), String(process.pid));
      }
      return new Promise((resolve) =>
        setTimeout(() => resolve({ token: args.token, pid: process.pid }), args.ms || 0));
    },
    async visit(args, ctx) {
      // Counts the session's visits in the pool's session store.
      const seen = (await ctx.session.get('visits')) || 0;
      await ctx.session.set('visits', seen + 1);
      return { visits: seen + 1, pid: process.pid, session: ctx.sessionId };
    },
    segfault() {
      // A line on stderr first: the crash report's tail must carry it.
      fs.writeSync(2, 'about to crash on purpose\n');
      process.kill(process.pid, 'SIGSEGV');
      return new Promise(() => {});
    },
    grow(args) {
      // Holds `mb` MiB, filled so that the pages are really there.
      globalThis.round6Held = (globalThis.round6Held || []).concat([Buffer.alloc(args.mb << 20, 1)]);
      return { pid: process.pid };
    },
    spawn_child() {
      const child = spawn('sleep', ['600'], { stdio: 'ignore' });
      child.unref();
      return { child_pid: child.pid, pid: process.pid };
    },
    async flood_stderr(args) {
      // Node makes the stderr pipe non-blocking: each MiB waits for the
      // last to drain rather than fail with EAGAIN.
      const chunk = (args.cr ? 'x'.repeat(1023) + '\r' : 'x'.repeat(1024)).repeat(1024);
      for (let i = 0; i < args.mb; i += 1) {
        if (!process.stderr.write(chunk)) {
          await new Promise((resolve) => process.stderr.once('drain', resolve));
        }
      }
      return { pid: process.pid };
    },
  },
}).run();
