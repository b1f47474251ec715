// A Node worker whose command starts a child with inherited stdio: the
// child holds the worker's stdout (the protocol pipe) as long as it lives.
const { spawn } = require('child_process');
const { Worker } = require('snakepit-bridge');

new Worker({
  commands: {
    spawn_child() {
      const child = spawn('sleep', ['300'], { stdio: 'inherit' });
      child.unref();
      return { child_pid: child.pid, pid: process.pid };
    },
    sleep(args) {
      return new Promise((resolve) => setTimeout(() => resolve({ pid: process.pid }), args.ms || 0));
    },
  },
}).run();
