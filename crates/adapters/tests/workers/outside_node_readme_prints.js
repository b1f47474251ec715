// For outside_node_readme.rs: bridges/node/README.md, "Stdout and stdin
// belong to the protocol": "Under a pool (`SNAKEPIT_PROTOCOL` is set) this
// happens as soon as the bridge is required, so require it before anything
// that prints." This script prints in every way at load time, after the
// require and before it makes its worker.
'use strict';

const { Worker } = require('snakepit-bridge');

console.log('console.log at load time');
console.info('console.info at load time');
console.table([{ a: 1 }]);
process.stdout.write('process.stdout.write at load time\n');

new Worker({ commands: { pid: () => ({ pid: process.pid }) } }).run();
