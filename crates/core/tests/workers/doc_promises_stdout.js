// A Node.js worker for crates/adapters/tests/doc_promises.rs: what user code
// writes to standard output goes to stderr, never into the frames
// (docs/bridges.md, "Standard output belongs to the protocol").
const { spawnSync } = require('child_process');
const { Worker } = require('snakepit-bridge');

const worker = new Worker({
  commands: {
    outside_output() {
      process.stdout.write('process.stdout.write\n');
      console.log('console.log');
      console.info('console.info');
      console.debug('console.debug');
      console.warn('console.warn');
      console.table([{ a: 1 }]);
      console.dir({ dir: true });
      // A child process given stderr for its stdout, as the page advises.
      spawnSync('echo', ['a child process'], { stdio: ['ignore', 2, 2] });
      return { pid: process.pid };
    },
    pid() {
      return process.pid;
    },
  },
});

worker.run();
