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
      // A marker file says the call has started (the test kills the worker
      // only then: before, the call would rightly go to another worker).
      if (args.marker) require('fs').writeFileSync(args.marker, 'started');
      return new Promise((resolve) => setTimeout(() => resolve({ pid: process.pid }), args.ms || 0));
    },
  },
}).run();
