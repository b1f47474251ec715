// A worker in the original Elixir Snakepit's style, written from its docs
// (shared/reference/upstream-wire-protocol.md): no hello, no bridge library,
// keys sorted, a timestamp in every reply, errors as plain strings, frames
// written with process.stdout.write. Records what it sees, for the tests.
'use strict';

const seenTypes = [];
const seenKeys = new Set();
let buffer = Buffer.alloc(0);
let busy = false;
let waiting = [];

function sorted(value) {
  if (Array.isArray(value)) return value.map(sorted);
  if (value !== null && typeof value === 'object') {
    const out = {};
    for (const k of Object.keys(value).sort()) out[k] = sorted(value[k]);
    return out;
  }
  return value;
}

function send(obj) {
  const body = Buffer.from(JSON.stringify(sorted(obj)), 'utf8');
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length, 0);
  process.stdout.write(header);
  process.stdout.write(body);
}

function handle(req, done) {
  const args = req.args || {};
  switch (req.command) {
    case 'ping':
      return done(null, { status: 'ok', message: 'pong', worker_id: args.worker_id || 'unknown', pid: process.pid });
    case 'echo':
      return done(null, { status: 'ok', echoed: args });
    case 'sleep':
      return setTimeout(() => {
        // Requests written while this one ran would be in `waiting`.
        done(null, { slept: args.ms || 0, ahead: waiting.length > 0 || buffer.length > 0, pid: process.pid });
      }, args.ms || 0);
    case 'seen':
      return done(null, { types: seenTypes, keys: Array.from(seenKeys).sort(), pid: process.pid });
    case 'fail':
      return done(new Error(`failed on purpose: ${args.why || '?'}`));
    default:
      return done(new Error(`Unknown command: ${req.command}`));
  }
}

// One request at a time, as the original pool sent them.
function next() {
  if (busy || waiting.length === 0) return;
  busy = true;
  const req = waiting.shift();
  handle(req, (err, result) => {
    const ts = new Date().toISOString();
    if (err) send({ id: req.id, success: false, error: err.message, timestamp: ts });
    else send({ id: req.id, success: true, result, timestamp: ts });
    busy = false;
    next();
  });
}

process.stdin.on('data', (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  while (buffer.length >= 4) {
    const length = buffer.readUInt32BE(0);
    if (buffer.length < 4 + length) break;
    const req = JSON.parse(buffer.subarray(4, 4 + length).toString('utf8'));
    buffer = buffer.subarray(4 + length);
    if ('type' in req) seenTypes.push(req.type);
    for (const k of Object.keys(req)) seenKeys.add(k);
    waiting.push(req);
  }
  next();
});
process.stdin.on('end', () => process.exit(0));
console.error('original-style node bridge started');
