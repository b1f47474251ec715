// For outside_signal_races.rs: a Node worker declaring `sigint: true` and
// running one call at a time. Every final reply the bridge writes is noted
// in <tmp>/snakepit-osr-replies-<pid>.log as "<id> ok" or "<id> <error
// type>"; every SIGINT the process gets is noted in the file OSR_SIGNALS
// names.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { Worker } = require('snakepit-bridge');
const { setTimeout: sleep } = require('timers/promises');

const REPLIES = path.join(os.tmpdir(), `snakepit-osr-replies-${process.pid}.log`);
// A file left by an earlier process with the same pid is emptied first.
fs.writeFileSync(REPLIES, '');

const reply = Worker.prototype._reply;
Worker.prototype._reply = function noting(ctx, message) {
  const first = !ctx._done;
  reply.call(this, ctx, message);
  if (first) {
    const what = message.success ? 'ok' : message.error.type;
    fs.appendFileSync(REPLIES, `${ctx.requestId} ${what}\n`);
  }
};

function note(file, what) {
  if (file) fs.appendFileSync(file, `${what}\n`);
}

const worker = new Worker({
  sigint: true,
  maxConcurrency: 1,
  commands: {
    echo(args, ctx) {
      return { token: args.token, pid: process.pid, id: ctx.requestId };
    },
    async sleep(args) {
      note(args.log, `start ${args.token}`);
      await sleep(args.ms);
      note(args.log, `end ${args.token}`);
      return { token: args.token, pid: process.pid };
    },
  },
});

process.on('SIGINT', () => note(process.env.OSR_SIGNALS, 'sigint'));

worker.run();
