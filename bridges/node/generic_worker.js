#!/usr/bin/env node
'use strict';

// The generic Snakepit worker for Node.js: serves ping, echo, compute, info
// and random. The pool runs it as `node generic_worker.js --mode pool-worker`;
// arguments are ignored, so options the pool adds later do no harm.

const { Worker, genericCommands } = require('./lib');

new Worker({ commands: genericCommands() }).run();
