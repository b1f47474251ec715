'use strict';

// Shared by the tests: the vectors file, and a child worker driven over real
// pipes the way the pool drives it.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const wire = require('../lib/wire');

const BRIDGE_DIR = path.resolve(__dirname, '..');
const VECTORS_PATH = path.resolve(BRIDGE_DIR, '../../tests/vectors/frames.json');
const GENERIC_WORKER = path.join(BRIDGE_DIR, 'generic_worker.js');
const EXAMPLE_WORKER = path.join(__dirname, 'fixtures', 'example_worker.js');

function loadVectors() {
  return JSON.parse(fs.readFileSync(VECTORS_PATH, 'utf8'));
}

// `{"$bin": hex}` in the vectors stands for binary data.
function fromVectorValue(value) {
  if (Array.isArray(value)) return value.map(fromVectorValue);
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === '$bin') return Buffer.from(value.$bin, 'hex');
    const out = {};
    for (const key of keys) out[key] = fromVectorValue(value[key]);
    return out;
  }
  return value;
}

function toVectorValue(value) {
  if (ArrayBuffer.isView(value)) {
    return { $bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex') };
  }
  if (Array.isArray(value)) return value.map(toVectorValue);
  if (value !== null && typeof value === 'object') {
    const out = {};
    for (const key of Object.keys(value)) out[key] = toVectorValue(value[key]);
    return out;
  }
  return value;
}

// A directory whose only entry is `snakepit-bridge` -> this bridge, so that
// NODE_PATH=<dir> lets a script require('snakepit-bridge') as the pool's
// NODE_PATH does.
let nodePathDir = null;
function bridgeNodePath() {
  if (nodePathDir === null) {
    nodePathDir = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-node-path-'));
    fs.symlinkSync(BRIDGE_DIR, path.join(nodePathDir, 'snakepit-bridge'), 'dir');
    process.on('exit', () => fs.rmSync(nodePathDir, { recursive: true, force: true }));
  }
  return [nodePathDir, path.join(BRIDGE_DIR, 'node_modules')].join(path.delimiter);
}

// A worker process and the pool's end of its pipes. Frames the worker writes
// are decoded and checked as the pool would check them; anything on stdout
// that is not a valid frame fails the test.
class WorkerProcess {
  constructor(script, { codec = 'json', env = {}, args = ['--mode', 'pool-worker'], cwd = undefined } = {}) {
    this.codec = wire.getCodec(codec);
    this.child = spawn(process.execPath, [script, ...args], {
      cwd,
      env: {
        ...process.env,
        NODE_PATH: bridgeNodePath(),
        SNAKEPIT_PROTOCOL: '1',
        SNAKEPIT_CODEC: codec,
        ...env,
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.frames = [];
    this.waiters = [];
    this.stderr = '';
    this.stdoutError = null;
    const reader = new wire.FrameReader({
      onFrame: (payload) => {
        try {
          this._deliver(wire.validateToPool(this.codec.decodePayload(payload)));
        } catch (err) {
          this.stdoutError = err;
        }
      },
      onError: (err) => {
        this.stdoutError = err;
      },
    });
    this.child.stdout.on('data', (chunk) => reader.push(chunk));
    this.child.stdout.on('end', () => reader.end());
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (text) => {
      this.stderr += text;
    });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => resolve({ code, signal }));
    });
  }

  _deliver(frame) {
    const i = this.waiters.findIndex((w) => w.match(frame));
    if (i === -1) {
      this.frames.push(frame);
      return;
    }
    const [waiter] = this.waiters.splice(i, 1);
    clearTimeout(waiter.timer);
    waiter.resolve(frame);
  }

  // The next frame (already received or still to come) that `match` accepts.
  next(match = () => true, timeoutMs = 5000) {
    const i = this.frames.findIndex(match);
    if (i !== -1) return Promise.resolve(this.frames.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const waiter = { match, resolve };
      waiter.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no matching frame within ${timeoutMs} ms; stderr:\n${this.stderr}`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  reply(id, timeoutMs) {
    return this.next((f) => (f.type === undefined || f.type === 'response') && f.id === id, timeoutMs);
  }

  send(message) {
    this.child.stdin.write(this.codec.encodeFrame(message));
  }

  sendRaw(bytes) {
    this.child.stdin.write(bytes);
  }

  request(id, command, args = {}, extra = {}) {
    this.send({ id, command, args, timestamp: new Date().toISOString(), ...extra });
  }

  async call(id, command, args = {}, extra = {}) {
    this.request(id, command, args, extra);
    return this.reply(id);
  }

  async hello() {
    return this.next((f) => f.type === 'hello');
  }

  async close() {
    this.child.stdin.end();
    const result = await this.exited;
    assert.equal(this.stdoutError, null, `bad frame on stdout: ${this.stdoutError}`);
    return result;
  }

  kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** A temporary directory holding `source` as worker.js, removed after test `t`. */
function scriptDir(t, source, prefix = 'snakepit-node-test-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const script = path.join(dir, 'worker.js');
  fs.writeFileSync(script, source);
  return { dir, script };
}

/** Resolves once `cond()` holds, checking every 10 ms; rejects after 10 s. */
async function until(cond, what) {
  const deadline = Date.now() + 10000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

module.exports = {
  BRIDGE_DIR,
  scriptDir,
  until,
  GENERIC_WORKER,
  EXAMPLE_WORKER,
  loadVectors,
  fromVectorValue,
  toVectorValue,
  bridgeNodePath,
  WorkerProcess,
};
