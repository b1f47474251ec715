'use strict';

// The worker side of a Snakepit pool: a registry of commands, the serve loop
// that runs them for the frames read from stdin, and the per-call Context.

const fs = require('fs');
const util = require('util');
const { Console } = require('console');

const wire = require('./wire');
const { userRequires } = require('./packages');
const generic = require('./generic');

const BRIDGE_NAME = 'snakepit-node';
const BRIDGE_VERSION = require('../package.json').version;
const DEFAULT_MAX_CONCURRENCY = 16;
// The most host calls of this worker that may wait for their host_reply at
// once, across all its calls. It matches the pool's limit
// (MAX_HOST_CALLS_IN_FLIGHT in crates/core/src/worker/host.rs), which treats
// one more as a protocol error and replaces the worker; further host calls
// are held in the bridge, in order, until a reply frees a place.
const MAX_HOST_CALLS_IN_FLIGHT = 256;

// ---------------------------------------------------------------------------
// OpenTelemetry (optional)

// `@opentelemetry/api`, looked up on the first traced request (so workers
// that never see a traceparent never pay for it) from the worker's own
// script first, where the application installed it; null when absent.
let otelApi;
function otel() {
  if (otelApi === undefined) otelApi = loadOptional('@opentelemetry/api');
  return otelApi;
}

// An optional package: from where the user's script would load it (so that
// the handler's span goes to the API instance their SDK registered with),
// else from beside the bridge; null when it is in neither.
function loadOptional(name) {
  for (const load of [...userRequires(), require]) {
    try {
      return load(name);
    } catch (_) {
      // not installed there
    }
  }
  return null;
}

// W3C trace context and baggage from `@opentelemetry/core`, for when the
// application registered no propagator; null when that is not installed.
let fallbackPropagator;
function w3cPropagator() {
  if (fallbackPropagator === undefined) {
    const core = loadOptional('@opentelemetry/core');
    fallbackPropagator =
      core === null
        ? null
        : new core.CompositePropagator({
            propagators: [new core.W3CTraceContextPropagator(), new core.W3CBaggagePropagator()],
          });
  }
  return fallbackPropagator;
}

// The caller's context, read from the request's trace fields by the
// propagator the application registered (`api.propagation`, as the Node SDK
// does, honouring OTEL_PROPAGATORS), else by W3C trace context and baggage.
function extractContext(api, ctx) {
  const carrier = { traceparent: ctx.traceparent };
  if (ctx.tracestate) carrier.tracestate = ctx.tracestate;
  if (ctx.baggage) carrier.baggage = ctx.baggage;
  if (api.propagation.fields().length > 0) return api.propagation.extract(api.ROOT_CONTEXT, carrier);
  const fallback = w3cPropagator();
  if (fallback === null) return null;
  return fallback.extract(api.ROOT_CONTEXT, carrier, api.defaultTextMapGetter);
}

// The span `snakepit.worker <command>`, child of the caller's span, and the
// context to run the handler in; null without the API or without a valid
// caller's span context.
function startRequestSpan(ctx) {
  const api = otel();
  if (api === null) return null;
  const parent = extractContext(api, ctx);
  if (parent === null) return null;
  const remote = api.trace.getSpanContext(parent);
  if (remote === undefined || !api.trace.isSpanContextValid(remote)) return null;
  const tracer = api.trace.getTracer('snakepit-bridge', BRIDGE_VERSION);
  const span = tracer.startSpan(`snakepit.worker ${ctx.command}`, { kind: api.SpanKind.SERVER }, parent);
  return { api, span, context: api.trace.setSpan(parent, span), worker: ctx.worker };
}

// The span, or null when starting it threw: the propagator and the tracer
// are the application's code, run on fields of the request (a propagator
// may throw on a malformed header), and the call must be answered all the
// same, untraced.
function tryStartRequestSpan(ctx) {
  try {
    return startRequestSpan(ctx);
  } catch (err) {
    ctx.worker.log.error(`request ${ctx.requestId} runs untraced: starting its span failed: ${describeThrown(err)}`);
    return null;
  }
}

// Never throws, for the same reason: the reply goes out whatever the
// application's span processors do.
function endRequestSpan(traced, err) {
  try {
    if (err !== undefined) {
      try {
        if (err instanceof Error) traced.span.recordException(err);
      } catch (_) {
        // a thrown value that cannot be read (a throwing getter, a revoked proxy)
      }
      let message;
      try {
        message = String((err && err.message) || err);
      } catch (_) {
        message = UNREADABLE;
      }
      traced.span.setStatus({ code: traced.api.SpanStatusCode.ERROR, message });
    }
    traced.span.end();
  } catch (failure) {
    traced.worker.log.error(`ending a request's span failed: ${describeThrown(failure)}`);
  }
}

// ---------------------------------------------------------------------------
// Errors

// Thrown into a handler's awaits when its call was cancelled; a handler may
// also throw it itself. Its name is the wire error type.
class CancelledError extends Error {
  constructor(message = 'the call was cancelled') {
    super(message);
    this.name = 'Cancelled';
  }
}

// A failed host_reply. `name` and `type` carry the host's error type (e.g.
// UnknownFunction), so a handler that lets it escape reports that type.
class HostCallError extends Error {
  constructor(type, message, traceback) {
    super(message);
    this.name = type;
    this.type = type;
    if (traceback) this.hostTraceback = traceback;
  }
}

// A handler's result, or a promise of it: a thenable is adopted as `await`
// would adopt it (one whose then() throws, or calls back twice, settles
// once), and a plain value is passed on at once.
function settle(result, onValue, onError) {
  let adopted = null;
  try {
    if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
      // Promise.resolve reads a native promise's `constructor`, and throws
      // here when that is a getter that throws; `await` rejects instead.
      adopted = Promise.resolve(result);
    }
  } catch (err) {
    onError(err); // a `then` or `constructor` getter that throws
    return;
  }
  if (adopted !== null) adopted.then(onValue, onError);
  else onValue(result);
}

// Text as the protocol can carry it: a lone surrogate (half of a surrogate
// pair, say from a message built from text cut mid-emoji) has no UTF-8 form
// and becomes U+FFFD. Error fields are made so rather than refused, since
// the failed reply is the only way the caller learns what went wrong.
const wellFormed =
  typeof String.prototype.toWellFormed === 'function'
    ? (s) => s.toWellFormed()
    : (s) => s.replace(/\p{Surrogate}/gu, '\ufffd');

const UNREADABLE = '<unreadable thrown value>';

// A value read from a frame, as text for a message or a log line. String()
// throws on a map whose `toString` is not a function (a frame may hold
// one); util.inspect describes such a map instead.
function wireText(value) {
  try {
    return String(value);
  } catch (_) {
    return util.inspect(value);
  }
}

// A field of a frame quoted for a message or a log line, at most a few
// hundred characters: the field can be as long as its frame, and the
// ProtocolError quoting it must stay a small frame.
function shown(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (_) {
    // a value JSON cannot write; wireText describes it
  }
  if (typeof text !== 'string') text = wireText(value);
  return wellFormed(text.length <= 200 ? text : `${text.slice(0, 200)}... (${text.length} characters)`);
}

// Whether a thrown value is an Error; false for one that cannot be asked (a
// revoked proxy, whose prototype cannot be read).
function isError(err) {
  try {
    return err instanceof Error;
  } catch (_) {
    return false;
  }
}

// A thrown value as text for the log: its stack, else util.inspect; never
// throws.
function describeThrown(err) {
  try {
    if (err instanceof Error && typeof err.stack === 'string') return err.stack;
  } catch (_) {
    // fall back to util.inspect
  }
  try {
    return util.inspect(err);
  } catch (_) {
    return UNREADABLE;
  }
}

// The wire form of a thrown value: {type, message, traceback}. Never throws:
// a value whose properties cannot be read (a getter that throws, a revoked
// proxy) gives {type: 'Error', message: '<unreadable thrown value>'}.
function errorToWire(err) {
  try {
    return readError(err);
  } catch (_) {
    return { type: 'Error', message: UNREADABLE };
  }
}

function readError(err) {
  if (err instanceof Error) {
    // Each field on its own: an Error whose stack getter throws still
    // reports its type and message.
    let type;
    try {
      type = wellFormed(String(errorType(err)));
    } catch (_) {
      type = 'Error';
    }
    let message;
    try {
      message = wellFormed(String(err.message));
    } catch (_) {
      message = UNREADABLE;
    }
    const error = { type, message };
    try {
      const stack = err.stack;
      if (typeof stack === 'string') error.traceback = wellFormed(stack);
    } catch (_) {
      // no traceback then
    }
    return error;
  }
  return { type: 'Error', message: wellFormed(typeof err === 'string' ? err : util.inspect(err)) };
}

function errorType(err) {
  // A subclass that does not set `name` inherits its parent's ("Error",
  // "TypeError"); its constructor name says more.
  let type = err.name;
  const ctor = err.constructor;
  const own = (o) => o !== null && o !== undefined && Object.prototype.hasOwnProperty.call(o, 'name');
  if (!type || (typeof ctor === 'function' && ctor.name && !own(err) && !own(ctor.prototype))) {
    type = (typeof ctor === 'function' && ctor.name) || 'Error';
  }
  return type;
}

// ---------------------------------------------------------------------------
// Logging

function makeLogger(prefix) {
  const line = (level, args) => {
    process.stderr.write(`${prefix()} ${level} ${util.format(...args)}\n`);
  };
  return {
    debug: (...args) => line('DEBUG', args),
    info: (...args) => line('INFO', args),
    warn: (...args) => line('WARN', args),
    error: (...args) => line('ERROR', args),
  };
}

// ---------------------------------------------------------------------------
// Context

// What a handler gets besides its args. Cheap to build: the AbortController
// is only made when a handler asks for `signal`, since most never do.
class Context {
  constructor(worker, request) {
    this.worker = worker;
    this.requestId = request.id;
    this.command = request.command;
    // An optional field of another type than the protocol's is absent; a
    // timeout past 2^53 - 1 is no integer a number holds exactly.
    this.sessionId = typeof request.session_id === 'string' ? request.session_id : null;
    this.traceparent = typeof request.traceparent === 'string' ? request.traceparent : null;
    this.tracestate = typeof request.tracestate === 'string' ? request.tracestate : null;
    this.baggage = typeof request.baggage === 'string' ? request.baggage : null;
    this.timeoutMs = Number.isSafeInteger(request.timeout_ms) && request.timeout_ms >= 0 ? request.timeout_ms : null;
    this.streamRequested = request.stream === true;
    this._cancelled = false;
    this._done = false; // the final response was written
    this._queued = false; // waiting for a free concurrency slot
    this._turn = -1; // the worker's _turn when it started (with sigint)
    this._controller = null;
    this._hostCalls = null; // ids of this call's pending host calls
    this._log = null;
    this._session = null;
  }

  get workerId() {
    return this.worker.workerId;
  }

  get cancelled() {
    return this._cancelled;
  }

  get signal() {
    if (this._controller === null) {
      this._controller = new AbortController();
      if (this._cancelled) this._controller.abort();
    }
    return this._controller.signal;
  }

  throwIfCancelled() {
    if (this._cancelled) throw new CancelledError(`request ${this.requestId} was cancelled`);
  }

  get log() {
    if (this._log === null) {
      this._log = makeLogger(() => `[${BRIDGE_NAME} ${this.worker.workerId || '-'} req=${this.requestId}]`);
    }
    return this._log;
  }

  // Sends a partial result. Chunks only reach callers that asked for a
  // stream, so for the others nothing is written; returns whether it was.
  // Once the call is cancelled nothing is written either, also from a
  // listener on ctx.signal, which runs before the Cancelled reply is made.
  // A chunk larger than the pool reads ends the call instead: its failed
  // reply (ResultTooLarge) goes out, and this returns false, as every later
  // sendChunk does.
  sendChunk(data) {
    if (this._done || this._cancelled || !this.streamRequested) return false;
    return this.worker._sendChunk(this, data === undefined ? null : data);
  }

  // Asks the pool to run a host function; resolves with its result, rejects
  // with a HostCallError, or with a CancelledError once the call is cancelled
  // or answered (from a task or timer the handler left behind): the pool
  // would no longer know the call's session.
  callHost(fn, args = {}) {
    if (this._cancelled) {
      return handled(Promise.reject(new CancelledError(`request ${this.requestId} was cancelled`)));
    }
    if (this._done) {
      return handled(Promise.reject(new CancelledError(`request ${this.requestId} is already finished`)));
    }
    try {
      return this.worker._callHost(this, String(fn), args === undefined ? {} : args);
    } catch (err) {
      return Promise.reject(err); // an encoding error, for the caller to see
    }
  }

  get session() {
    if (this._session === null) {
      this._session = {
        get: (key) => this.callHost('session.get', { key }),
        set: (key, value) => this.callHost('session.set', { key, value: value === undefined ? null : value }),
        delete: (key) => this.callHost('session.delete', { key }),
      };
    }
    return this._session;
  }

  // Marks the call cancelled and wakes everything waiting on its behalf.
  _cancel() {
    if (this._cancelled) return;
    this._cancelled = true;
    if (this._controller !== null) this._controller.abort();
    this.worker._failHostCalls(this, () => new CancelledError(`request ${this.requestId} was cancelled`));
  }
}

// Names as the other bridges and the protocol spell them, for people moving
// between languages.
for (const [alias, name] of [
  ['request_id', 'requestId'],
  ['session_id', 'sessionId'],
  ['worker_id', 'workerId'],
]) {
  Object.defineProperty(Context.prototype, alias, {
    get() {
      return this[name];
    },
  });
}
Context.prototype.call_host = Context.prototype.callHost;

// ---------------------------------------------------------------------------
// Stdout and stdin protection

let protectedFrameFd = null;
let frameHandle = null; // libuv's handle of fd 1, when it has one (a pipe, a TTY)
let userStdout = null;

// What user code gets as process.stdout: a stream that forwards what is
// written to process.stderr, line by line as it comes (stderr is
// synchronous on pipes and files). Ending or destroying it (code written
// for a command-line tool does so when it is done) ends only this stream,
// never stderr: the next read of process.stdout gets a new one, and
// console, which writes to stderr itself, is not affected at all.
function makeUserStdout() {
  const { Writable } = require('stream');
  const err = process.stderr;
  const out = new Writable({
    decodeStrings: false,
    write(chunk, encoding, callback) {
      // Done at once, so that this stream never queues anything of its own:
      // its writes keep their order with console's (which go straight to
      // stderr), and nothing is lost to a process.exit() right after them.
      // stderr keeps its own order and reports its own errors.
      err.write(chunk, encoding);
      callback();
    },
  });
  // What code asks of a stdout stream, answered by stderr's.
  for (const key of ['fd', 'isTTY', 'columns', 'rows', '_handle']) {
    Object.defineProperty(out, key, { configurable: true, enumerable: key !== '_handle', get: () => err[key] });
  }
  for (const key of ['getColorDepth', 'hasColors', 'getWindowSize', 'cursorTo', 'moveCursor', 'clearLine',
    'clearScreenDown']) {
    if (typeof err[key] === 'function') out[key] = err[key].bind(err);
  }
  return out;
}

function currentUserStdout() {
  if (userStdout === null || userStdout.writableEnded || userStdout.destroyed) userStdout = makeUserStdout();
  return userStdout;
}

// Keeps fd 1 for frames and sends everything user code prints to stderr:
// process.stdout becomes a stream writing to stderr and every console
// method writes to stderr. Node cannot dup a descriptor without native
// code, so fd 1 itself stays the pipe: a native addon or a child process
// inheriting fd 1 can still write into it. Returns the descriptor to write
// frames to.
function protectStdout() {
  if (protectedFrameFd !== null) return protectedFrameFd;
  const real = process.stdout;
  // Creating the stdout stream made libuv switch fd 1 to non-blocking. Until
  // run() writes frames (see FrameOutput), it is made blocking again, as
  // code written before run() expects of a pipe.
  if (real._handle && typeof real._handle.setBlocking === 'function') {
    frameHandle = real._handle;
    frameHandle.setBlocking(true);
  }
  // Someone may hold the real stream already; its writes go to stderr too.
  real.write = function write(...args) {
    return process.stderr.write(...args);
  };
  Object.defineProperty(process, 'stdout', {
    configurable: true,
    enumerable: true,
    get: currentUserStdout,
  });
  const errConsole = new Console({ stdout: process.stderr, stderr: process.stderr });
  for (const key of Object.keys(Console.prototype).concat(Object.keys(errConsole))) {
    if (typeof errConsole[key] === 'function' && typeof console[key] === 'function') {
      console[key] = errConsole[key].bind(errConsole);
    }
  }
  protectedFrameFd = 1;
  return protectedFrameFd;
}

let stdinGetter = null;
let userStdin = null;

// Keeps fd 0 for frames: the stream Node makes for descriptor 0 becomes
// the bridge's own (made on first use, by Node's own getter, as a pipe,
// file or TTY needs), and process.stdin becomes an empty stream that ends
// as soon as it is read, as from /dev/null. So user code that reads stdin
// (a prompt library's readline interface) sees its end at once, and
// pausing or closing process.stdin cannot pause the bridge's input nor
// take its frames. Code that took process.stdin before this ran still
// holds the frame stream. Child processes spawned with an inherited stdin
// can still read descriptor 0: give them 'ignore'.
function protectStdin() {
  if (stdinGetter !== null) return;
  const own = Object.getOwnPropertyDescriptor(process, 'stdin');
  stdinGetter = own && typeof own.get === 'function' ? own.get.bind(process) : (() => {
    const stream = process.stdin;
    return () => stream;
  })();
  Object.defineProperty(process, 'stdin', {
    configurable: true,
    enumerable: true,
    get: currentUserStdin,
  });
}

// process.stdin for user code: empty, ended once read. One that has ended,
// was destroyed or paused (closing a readline interface pauses its input)
// is replaced on the next read of process.stdin, so that every handler
// reading it sees its end, not a stream that ended or stopped before.
function currentUserStdin() {
  if (userStdin === null || userStdin.readableEnded || userStdin.destroyed || userStdin.readableFlowing === false) {
    const { Readable } = require('stream');
    userStdin = new Readable({ read() {} });
    userStdin.push(null);
    // Socket methods code calls on stdin without looking first.
    userStdin.ref = userStdin.unref = function keep() {
      return this;
    };
  }
  return userStdin;
}

// The stream frames are read from (protectStdin() first).
function frameInput() {
  protectStdin();
  return stdinGetter();
}

// What writeAllSync sleeps on.
const sleepCell = new Int32Array(new SharedArrayBuffer(4));
// Frames sent while one callback runs (the replies to the requests that
// came in one read, say) leave together, in order, in one write once it
// returns: `write` is called once per batch, not once per frame.
function batched(write) {
  let frames = [];
  const flush = () => {
    const out = frames;
    if (out.length === 0) return; // flushed early (see _exitOnUncaught)
    frames = [];
    write(out.length === 1 ? out[0] : Buffer.concat(out));
  };
  const send = (frame) => {
    frames.push(frame);
    if (frames.length === 1) queueMicrotask(flush);
  };
  send.flush = flush;
  return send;
}

// Frames queued while the pool does not read stdout, past which the next
// frame waits for them with a blocking write (see FrameOutput).
const MAX_QUEUED_BYTES = 8 * 1024 * 1024;

// Writes frames to fd 1 in order, without ever blocking while the pool
// reads: each write takes what the pipe holds at once (fd 1 is non-blocking
// here), and what is left waits for a timer, so that JavaScript (a SIGTERM
// listener, the handlers) runs on while the pool is not reading. Once
// MAX_QUEUED_BYTES wait, the next frame blocks until they are written: the
// pool slows a producer down, as a blocking pipe does.
class FrameOutput {
  constructor(fd, onClosed) {
    this.fd = fd;
    this.onClosed = onClosed; // the pool closed its end (EPIPE)
    this.queue = [];
    this.offset = 0; // bytes of queue[0] already written
    this.queued = 0; // bytes waiting
    this.timer = null;
    this.delay = 1;
    this.writing = false; // a write(2) is under way
    this.idle = []; // resolved once the queue is empty
  }

  write(frame) {
    if (this.queued >= MAX_QUEUED_BYTES) this.drainSync();
    this.queue.push(frame);
    this.queued += frame.length;
    if (this.queue.length === 1 && this.timer === null) this._pump();
  }

  _pump() {
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        const buf = this.queue[0];
        let n;
        try {
          n = fs.writeSync(this.fd, buf, this.offset, buf.length - this.offset);
        } catch (err) {
          if (err.code === 'EAGAIN') {
            this._retryLater();
            return;
          }
          if (err.code === 'EPIPE') this.onClosed();
          throw err;
        }
        this.offset += n;
        this.queued -= n;
        // The pool reads: the next wait for room is short again (a delay
        // left at its longest would stall a large frame 50 ms per pipe-full).
        if (n > 0) this.delay = 1;
        if (this.offset === buf.length) {
          this.queue.shift();
          this.offset = 0;
        }
      }
    } finally {
      this.writing = false;
    }
    this.delay = 1;
    this._settle();
  }

  _retryLater() {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.delay = Math.min(this.delay * 2, 50);
      this._pump();
    }, this.delay);
  }

  // Writes everything queued, blocking until it is written (an uncaught
  // exception's last frames, or too much queued).
  drainSync() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        const buf = this.queue[0];
        try {
          writeAllSync(this.fd, buf.subarray(this.offset));
        } catch (err) {
          if (err.code === 'EPIPE') this.onClosed();
          throw err;
        }
        this.queue.shift();
        this.offset = 0;
      }
    } finally {
      this.writing = false;
    }
    this.queued = 0;
    this._settle();
  }

  _settle() {
    const idle = this.idle;
    this.idle = [];
    for (const resolve of idle) resolve();
  }

  // Resolves once every frame given is written.
  whenIdle() {
    if (this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }
}

// Writes a whole buffer, blocking until it is written: on a non-blocking
// descriptor (EAGAIN) it waits a millisecond at a time rather than drop
// part of a frame.
function writeAllSync(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
      Atomics.wait(sleepCell, 0, 0, 1);
    }
  }
}

// ---------------------------------------------------------------------------
// Process-wide hooks

// The worker run() serves with: what happens outside its handlers is
// reported (and acted on) by it. The hooks go in once per process.
let processWorker = null;

function hookProcess(worker) {
  const first = processWorker === null;
  processWorker = worker;
  if (!first) return;
  // A promise a handler made and nobody awaits must not end the worker
  // (Node's default): logged, as Python logs a forgotten task's failure.
  process.on('unhandledRejection', (reason) => {
    processWorker.log.error(`unhandled promise rejection (a promise nobody awaited): ${describeThrown(reason)}`);
  });
  // After an uncaught exception (a throw in a timer's callback, say) Node
  // says resuming is unsafe: the worker still exits, but says why and
  // writes the frames already made first.
  process.on('uncaughtException', onUncaughtException);
}

function onUncaughtException(err) {
  processWorker._exitOnUncaught(err);
}

// ---------------------------------------------------------------------------
// Worker

// SNAKEPIT_MAX_CONCURRENCY: null when absent or empty, else a whole number
// of at least 1 written in decimal digits (as SNAKEPIT_MAX_FRAME_SIZE is
// read here and by the other bridges). Anything else (`1e3`, ` 4`, `0x10`,
// `4.0`, `0`) is a RangeError naming the variable: set by hand, it must
// not quietly become the option or the default.
function envConcurrency() {
  const raw = process.env.SNAKEPIT_MAX_CONCURRENCY;
  if (raw === undefined || raw === '') return null;
  const n = /^[0-9]+$/.test(raw) ? Number(raw) : 0;
  if (!(n >= 1)) {
    throw new RangeError(`SNAKEPIT_MAX_CONCURRENCY must be a whole number of at least 1 in decimal digits, not ${shown(raw)}`);
  }
  return n;
}

// The hello declares max_concurrency as an unsigned 32-bit number: more is
// taken as that many (no pool runs more calls at once on one worker).
const MAX_CONCURRENCY = 0xffffffff;

function concurrency(n) {
  if (typeof n !== 'number' || !(n >= 1) || (Number.isFinite(n) && !Number.isInteger(n))) {
    throw new RangeError(`maxConcurrency must be a whole number of at least 1, not ${util.inspect(n)}`);
  }
  return Math.min(n, MAX_CONCURRENCY);
}

// The largest payload a 4-byte length header can announce: a larger limit
// limits nothing more.
const MAX_FRAME_LIMIT = 0xffffffff;

// The limit each frame's length is compared with, both ways, checked as
// maxConcurrency is: a string or NaN would let every frame through, a
// number below 1 would skip every frame, and Infinity would set no limit
// while the pool keeps one.
function frameLimit(n) {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1) {
    throw new RangeError(`maxFrameSize must be a whole number of bytes, at least 1, not ${util.inspect(n)}`);
  }
  return Math.min(n, MAX_FRAME_LIMIT);
}

// The pool's max_frame_size, from SNAKEPIT_MAX_FRAME_SIZE (decimal bytes).
// Absent, or anything but a whole number of at least 1 written in digits,
// means the protocol's default: a worker must not fail to start over it.
function envFrameLimit() {
  const raw = process.env.SNAKEPIT_MAX_FRAME_SIZE;
  if (typeof raw !== 'string' || !/^[0-9]+$/.test(raw)) return wire.DEFAULT_MAX_FRAME_SIZE;
  const n = Number(raw);
  return n >= 1 ? Math.min(n, MAX_FRAME_LIMIT) : wire.DEFAULT_MAX_FRAME_SIZE;
}

// The payload size of an encoded frame.
function payloadSize(frame) {
  return frame.length - wire.HEADER_SIZE;
}

class Worker {
  // options: commands ({name: handler}), codec ('json' | 'msgpack'; default
  // SNAKEPIT_CODEC, else json), maxConcurrency (SNAKEPIT_MAX_CONCURRENCY
  // wins, default 16), sigint (declare and act on SIGINT, default false),
  // maxFrameSize (the largest frame payload either way; default
  // SNAKEPIT_MAX_FRAME_SIZE, else 64 MiB), name (bridge name in hello).
  constructor(options = {}) {
    const commands = options.commands || {};
    this.codecName = options.codec || process.env.SNAKEPIT_CODEC || 'json';
    this.maxConcurrency = concurrency(
      envConcurrency() ?? options.maxConcurrency ?? DEFAULT_MAX_CONCURRENCY
    );
    this.sigint = options.sigint === true;
    this.maxFrameSize = frameLimit(options.maxFrameSize ?? envFrameLimit());
    this.bridgeName = options.name || BRIDGE_NAME;
    this.bridgeVersion = BRIDGE_VERSION;
    this.workerId = process.env.SNAKEPIT_WORKER_ID || null;
    this._workerIdFromEnv = Boolean(this.workerId);
    this.startedAt = Date.now();
    this.requestsHandled = 0;
    this.log = makeLogger(() => `[${BRIDGE_NAME} ${this.workerId || '-'}]`);

    this._commands = new Map();
    for (const name of Object.keys(commands)) this.command(name, commands[name]);
    // The pool's init handshake and health checks are pings, so every worker
    // answers them; a `ping` of the user's own replaces this one.
    if (!this._commands.has('ping')) this.command('ping', generic.ping);
    this._codec = null;
    this._write = null;
    this._running = new Map(); // request id -> Context, queued ones included
    this._active = 0; // handlers started and not yet replied
    // With sigint: the event loop's turn, counted by a setImmediate after a
    // call starts (see _onSigint).
    this._turn = 0;
    this._turnPending = false;
    this._nextTurn = () => {
      this._turn++;
      this._turnPending = false;
    };
    this._queue = []; // requests waiting for a free slot
    this._queueHead = 0;
    this._startingQueued = false; // _startQueued is running (see there)
    this._hostCalls = new Map(); // host call id -> {ctx, resolve, reject}
    this._nextHostCallId = 1;
    // Host calls written whose host_reply has not been read: the pool's
    // count. A call that stopped waiting (cancelled, finished) stays here
    // until its reply arrives, since the pool counts it until then.
    this._hostWaiting = new Set();
    // Host calls held back while _hostWaiting is full: id -> encoded frame,
    // in the order they were made (a Map iterates in insertion order).
    this._hostHeld = new Map();
    this._strayHostReplies = 0; // see _onStrayHostReply
    this._inputEnded = false;
    this._drained = null; // resolves serve() once input ended and all is done
    this._writingFrames = () => false; // run() knows: a write to stdout is under way
    this._output = null; // run()'s FrameOutput
  }

  command(name, handler) {
    if (typeof handler !== 'function') {
      throw new TypeError(`handler for command ${name} must be a function`);
    }
    this._commands.set(String(name), handler);
    return this;
  }

  commandNames() {
    return Array.from(this._commands.keys());
  }

  get uptime() {
    return (Date.now() - this.startedAt) / 1000;
  }

  get codec() {
    if (this._codec === null) this._codec = wire.getCodec(this.codecName);
    return this._codec;
  }

  hello() {
    return {
      type: 'hello',
      protocol: wire.PROTOCOL_VERSION,
      pid: process.pid,
      bridge: `${this.bridgeName}/${BRIDGE_VERSION}`,
      runtime: `Node.js ${process.versions.node}`,
      capabilities: {
        max_concurrency: this.maxConcurrency,
        cancel: true,
        sigint: this.sigint,
        streaming: true,
        host_calls: true,
      },
    };
  }

  // Serves the process's stdin/stdout until EOF, then exits 0 (unless
  // options.exit is false, when the returned promise resolves instead).
  // Protects stdout first and handles SIGTERM (exit 0) and SIGINT.
  async run(options = {}) {
    try {
      void this.codec; // fail before touching the process on a bad codec
    } catch (err) {
      process.stderr.write(`${BRIDGE_NAME}: ${err.message}\n`);
      process.exit(1);
    }
    if (process.env.SNAKEPIT_PRELOAD === '1') {
      // The pool asked for a preload template (docs/preload.md): Node.js
      // cannot fork, so say so instead of serving on the template socket.
      process.stderr.write(`${BRIDGE_NAME}: preloading is not supported: Node.js cannot fork; start the pool without preload\n`);
      process.exit(1);
    }
    const fd = protectStdout();
    const input = frameInput();
    // Set once the process is on its way out without its waiting frames:
    // SIGTERM (the pool stops the worker, and may not be reading) or the
    // pool gone. Any other exit (process.exit in a handler, say) writes
    // them first, as it did when every frame was written at once.
    let abandon = false;
    process.on('SIGTERM', () => {
      abandon = true;
      process.exit(0);
    });
    process.on('SIGINT', () => this._onSigint());
    hookProcess(this);
    const output = new FrameOutput(fd, () => {
      if (abandon) return; // exiting already: the caller's error is dropped
      abandon = true;
      // The pool has gone away; nobody is left to answer.
      this.log.warn('stdout closed by the pool, exiting');
      process.exit(0);
    });
    process.on('exit', () => {
      if (abandon) return;
      abandon = true;
      try {
        // Frames made in this turn of the event loop (a reply made just
        // before a handler called process.exit(), a chunk it sent) still
        // wait in the batch: they go first.
        if (this._write !== null && typeof this._write.flush === 'function') this._write.flush();
        output.drainSync();
      } catch (_) {
        // stdout is gone: nothing more can be written there
      }
    });
    if (frameHandle !== null) frameHandle.setBlocking(false);
    this._output = output;
    this._writingFrames = () => output.writing;
    await this.serve({ input, write: (frame) => output.write(frame) });
    await output.whenIdle();
    if (options.exit !== false) process.exit(0);
  }

  // Serves frames read from `input` (a readable stream), writing frames with
  // `write(buffer)`. Resolves once the input ended and every call it started
  // has replied. No process-wide side effects, so tests can drive it.
  serve({ input, write }) {
    // The hello goes out at once: it is the whole answer to the start.
    this._write = write;
    this._send(this.hello());
    this._write = batched(write);
    const reader = new wire.FrameReader({
      maxFrameSize: this.maxFrameSize,
      onFrame: (payload) => this._onPayload(payload),
      onError: (err) => this._onWireError(err),
    });
    return new Promise((resolve, reject) => {
      this._drained = resolve;
      input.on('data', (chunk) => {
        if (Buffer.isBuffer(chunk)) {
          reader.push(chunk);
        } else if (ArrayBuffer.isView(chunk)) {
          // A stream of Uint8Array (Readable.from, Readable.fromWeb) is
          // bytes too; the reader needs Buffer methods.
          reader.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        } else {
          // Text (an input with an encoding set) has lost the bytes of the
          // length headers: no frame can be read from it.
          input.pause();
          reject(new TypeError(`serve() reads bytes, not ${typeof chunk} chunks: set no encoding on the input`));
        }
      });
      input.on('end', () => {
        reader.end();
        this._onInputEnd();
      });
      input.on('error', reject);
    });
  }

  // -- sending --------------------------------------------------------------

  // A reply among the messages sent here (a ProtocolError's, say) is
  // fitted to the pool's limit; the hello is sent as it is.
  _send(message) {
    const frame = this.codec.encodeFrame(message);
    this._write('success' in message ? this._fitted(message.id, frame, 'reply') : frame);
  }

  // `frame` if the pool reads a payload of its size, else the failed reply
  // that says it would not have (protocol.md, section 5): a larger frame
  // would make the pool replace the worker. Only replies come here.
  _fitted(id, frame, what) {
    const size = payloadSize(frame);
    if (size <= this.maxFrameSize) return frame;
    this.log.error(`the ${what} to request ${id} would be ${size} bytes, above the pool's limit of ${this.maxFrameSize}; sent ResultTooLarge instead`);
    return this.codec.encodeFrame(
      failure(id, 'ResultTooLarge', `the ${what === 'reply' ? 'result' : what} would be ${size} bytes, above the pool's limit of ${this.maxFrameSize}`)
    );
  }

  _sendChunk(ctx, data) {
    const frame = this.codec.encodeFrame({ type: 'chunk', id: ctx.requestId, data });
    if (payloadSize(frame) <= this.maxFrameSize) {
      this._write(frame);
      return true;
    }
    // The stream ends with the chunk that does not fit.
    this._reply(ctx, null, this._fitted(ctx.requestId, frame, 'chunk'));
    return false;
  }

  // Sends `message` as the call's one reply; `encoded`, when given, is that
  // reply already encoded.
  _reply(ctx, message, encoded = null) {
    if (ctx._done) return;
    ctx._done = true;
    if (this._running.get(ctx.requestId) === ctx) this._running.delete(ctx.requestId);
    if (!ctx._queued) this._active--;
    this._write(encoded === null ? this._encodeReply(ctx, message) : encoded);
    this._failHostCalls(ctx, () => new CancelledError(`request ${ctx.requestId} is already finished`));
    this._startQueued();
    this._checkDrained();
  }

  _encodeReply(ctx, message) {
    try {
      return this._fitted(ctx.requestId, this.codec.encodeFrame(message), 'reply');
    } catch (err) {
      // The result could not be encoded (a cycle, a BigInt in JSON, a
      // function in MessagePack, a string with a lone surrogate...): the
      // caller still gets its one reply. The message may quote a key of the
      // result (a cycle's), so it is made well-formed too.
      return this._fitted(ctx.requestId, this.codec.encodeFrame(
        failure(ctx.requestId, 'EncodeError', wellFormed(`the result could not be encoded: ${errorToWire(err).message}`))
      ), 'reply');
    }
  }

  // -- receiving ------------------------------------------------------------

  _onWireError(err) {
    this.log.error(`protocol error: ${err.message}`);
    if (err.kind === 'truncated') return; // the input is over; nobody reads a reply
    this._send(failure(0, 'ProtocolError', err.message));
  }

  _onPayload(payload) {
    let msg;
    try {
      msg = this.codec.decodePayload(payload);
    } catch (err) {
      if (!(err instanceof wire.WireError)) throw err;
      this._onWireError(err);
      return;
    }
    const type = msg.type;
    if (type === undefined || type === null || type === 'request') this._onRequest(msg);
    else if (type === 'cancel') this._onCancel(msg);
    else if (type === 'host_reply') this._onHostReply(msg);
    else {
      this.log.error(`unknown frame type ${shown(type)}`);
      this._send(failure(0, 'ProtocolError', `unknown frame type ${shown(type)}`));
    }
  }

  _onRequest(msg) {
    const id = msg.id;
    // A JavaScript number holds every integer only up to 2^53 - 1: a larger
    // id would be answered under another one (2^53 + 1 reads as 2^53), so
    // it is refused instead. The pool's ids never get near it.
    const hasId = Number.isSafeInteger(id) && id > 0;
    if (hasId && this._running.has(id)) {
      // Answering it, well-formed or not, would give the pool two final
      // replies for one id (and the running call's would then look
      // stale): dropped, with a line on stderr, as docs/protocol.md
      // section 4 allows.
      this.log.warn(`request id ${id} is already running; dropped`);
      return;
    }
    let problem = null;
    if (!hasId) {
      if (!('id' in msg)) problem = 'request lacks the field id';
      else if (Number.isInteger(id) && id > 0) problem = 'field id is past 2^53 - 1, the largest integer this bridge holds exactly';
      else problem = 'field id must be a positive integer';
    } else if (typeof msg.command !== 'string') {
      problem = 'command' in msg ? 'field command must be a string' : 'request lacks the field command';
    } else if (msg.args !== undefined && msg.args !== null && !wire.isMap(msg.args)) {
      problem = 'field args must be a map';
    }
    if (problem !== null) {
      this._send(failure(hasId ? id : 0, 'InvalidRequest', problem));
      return;
    }
    if (msg.args === undefined || msg.args === null) msg.args = {};
    this.requestsHandled++;
    // The init ping tells a worker its id when the environment did not.
    // An empty id is none, as an empty SNAKEPIT_WORKER_ID is.
    if (msg.command === 'ping' && !this._workerIdFromEnv && msg.args.initialization &&
      typeof msg.args.worker_id === 'string' && msg.args.worker_id !== '') {
      this.workerId = msg.args.worker_id;
    }
    const ctx = new Context(this, msg);
    // Queued calls sit in _running too, so that a cancel finds them.
    this._running.set(id, ctx);
    if (this._active >= this.maxConcurrency) {
      ctx._queued = true;
      this._queue.push({ ctx, args: msg.args });
      return;
    }
    this._active++;
    this._invoke(ctx, msg.args);
  }

  // A queued call whose handler is synchronous replies inside _invoke, and
  // its reply calls this again: that nested call returns at once, and the
  // loop already running starts the next queued call. Without that, every
  // queued call added to the stack, and a few thousand sent past the
  // declared max_concurrency overflowed it.
  _startQueued() {
    if (this._startingQueued) return;
    this._startingQueued = true;
    try {
      while (this._queueHead < this._queue.length && this._active < this.maxConcurrency) {
        const { ctx, args } = this._queue[this._queueHead];
        this._queue[this._queueHead++] = undefined;
        if (this._queueHead === this._queue.length) {
          this._queue = [];
          this._queueHead = 0;
        }
        if (ctx._done) continue; // cancelled while it waited
        ctx._queued = false;
        this._active++;
        this._invoke(ctx, args);
      }
    } finally {
      this._startingQueued = false;
    }
  }

  // Runs a handler. Synchronous handlers reply before this returns, with no
  // promise in between; that is the hot path of small commands.
  _invoke(ctx, args) {
    if (this.sigint) {
      ctx._turn = this._turn;
      if (!this._turnPending) {
        this._turnPending = true;
        setImmediate(this._nextTurn);
      }
    }
    const handler = this._commands.get(ctx.command);
    if (handler === undefined) {
      this._reply(ctx, failure(ctx.requestId, 'UnknownCommand', `Unknown command: ${wellFormed(ctx.command)}`));
      return;
    }
    const traced = ctx.traceparent === null ? null : tryStartRequestSpan(ctx);
    if (traced !== null) {
      this._invokeTraced(ctx, args, handler, traced);
      return;
    }
    let result;
    try {
      result = handler(args, ctx);
    } catch (err) {
      this._replyError(ctx, err);
      return;
    }
    settle(
      result,
      (value) => this._reply(ctx, success(ctx.requestId, value)),
      (err) => this._replyError(ctx, err)
    );
  }

  // The same, inside the request's span: spans the handler makes (also after
  // its awaits, given a context manager) are its children. The span ends
  // before the reply goes out.
  _invokeTraced(ctx, args, handler, traced) {
    let result;
    try {
      result = traced.api.context.with(traced.context, () => handler(args, ctx));
    } catch (err) {
      endRequestSpan(traced, err);
      this._replyError(ctx, err);
      return;
    }
    settle(
      result,
      (value) => {
        endRequestSpan(traced);
        this._reply(ctx, success(ctx.requestId, value));
      },
      (err) => {
        endRequestSpan(traced, err);
        this._replyError(ctx, err);
      }
    );
  }

  _replyError(ctx, err) {
    if (ctx._done) return;
    if (!isError(err)) this.log.error(`handler ${ctx.command} threw ${describeThrown(err)}`);
    const error = errorToWire(err);
    this._reply(ctx, { id: ctx.requestId, success: false, error });
  }

  _onCancel(msg) {
    const ctx = this._running.get(msg.id);
    if (ctx === undefined) return; // already finished: its reply is on its way
    this._cancel(ctx);
  }

  // The reply goes out at once: a handler that ignores its signal must not
  // hold up the pool, and whatever it returns later is dropped.
  _cancel(ctx) {
    ctx._cancel();
    this._reply(ctx, failure(ctx.requestId, 'Cancelled', `request ${ctx.requestId} was cancelled`));
  }

  _onSigint() {
    if (!this.sigint) {
      this.log.info('SIGINT ignored (close stdin or send SIGTERM to stop the worker)');
      return;
    }
    // A handler that finished just before the signal was handled has already
    // replied and left _running, so a late signal finds nothing to cancel.
    // A call started in this turn of the event loop is left alone too: the
    // signal and its request were read in the same poll, so the signal may
    // have come first, while the worker was between calls.
    const active = Array.from(this._running.values())
      .filter((ctx) => !ctx._queued && ctx._turn !== this._turn);
    if (active.length === 0) {
      this.log.info('SIGINT between calls ignored');
      return;
    }
    for (const ctx of active) this._cancel(ctx);
  }

  // -- host calls -----------------------------------------------------------

  _callHost(ctx, fn, args) {
    if (this._inputEnded) {
      return handled(Promise.reject(new HostCallError('HostUnavailable', 'stdin is closed: the pool cannot answer')));
    }
    // Encoded before anything is registered, so unencodable args just reject;
    // under JSON, NaN, infinities and bytes too (see encodeJsonFrame), which
    // the MessagePack encoder writes and the pool then refuses.
    const frame = this.codec.encodeFrame(
      { type: 'host_call', id: this._nextHostCallId, request_id: ctx.requestId, function: fn, args },
      true
    );
    const id = this._nextHostCallId++;
    if (payloadSize(frame) > this.maxFrameSize) {
      // The pool would refuse the frame and replace the worker: the handler
      // learns it here, and nothing is sent.
      throw new HostCallError(
        'ResultTooLarge',
        `the host call ${wellFormed(fn.length > 100 ? `${fn.slice(0, 100)}...` : fn)} would be ${payloadSize(frame)} bytes, above the pool's limit of ${this.maxFrameSize}`
      );
    }
    const promise = new Promise((resolve, reject) => {
      this._hostCalls.set(id, { ctx, resolve, reject });
      if (ctx._hostCalls === null) ctx._hostCalls = new Set();
      ctx._hostCalls.add(id);
    });
    // Held behind earlier held calls too, so that they leave in order.
    if (this._hostHeld.size === 0 && this._hostWaiting.size < MAX_HOST_CALLS_IN_FLIGHT) {
      this._sendHostCall(id, frame);
    } else {
      this._hostHeld.set(id, frame);
    }
    return handled(promise);
  }

  _sendHostCall(id, frame) {
    this._hostWaiting.add(id);
    this._write(frame);
  }

  // Sends held host calls, oldest first, while the pool has room for them.
  // A held call that was failed meanwhile has already left _hostHeld.
  _sendHeldHostCalls() {
    for (const [id, frame] of this._hostHeld) {
      if (this._hostWaiting.size >= MAX_HOST_CALLS_IN_FLIGHT) return;
      this._hostHeld.delete(id);
      this._sendHostCall(id, frame);
    }
  }

  _onHostReply(msg) {
    // Only a host call that was sent and not yet answered can be answered:
    // an id of a held call is as unknown to the pool as any other.
    if (!this._hostWaiting.delete(msg.id)) {
      this._onStrayHostReply(msg.id);
      return;
    }
    // Its place is free: the next held host call goes out, whatever
    // becomes of this reply.
    this._sendHeldHostCalls();
    const pending = this._hostCalls.get(msg.id);
    if (pending === undefined) return; // its wait was given up (cancelled, finished)
    this._hostCalls.delete(msg.id);
    pending.ctx._hostCalls.delete(msg.id);
    if (msg.success === true) {
      pending.resolve(msg.result === undefined ? null : msg.result);
      return;
    }
    // Anything but success: true fails the host call, with the error's type
    // and message, or HostError and a message of its own where it has none.
    const error = msg.error;
    const hasMessage = (m) => m !== undefined && m !== null && m !== '';
    if (error !== null && typeof error === 'object') {
      const message = hasMessage(error.message) ? wireText(error.message) : 'host call failed';
      // Only a text traceback is kept: hostTraceback is declared a string.
      const traceback = typeof error.traceback === 'string' ? error.traceback : undefined;
      pending.reject(new HostCallError(wireText(error.type || 'HostError'), message, traceback));
    } else {
      pending.reject(new HostCallError('HostError', hasMessage(error) ? wireText(error) : 'host call failed'));
    }
  }

  // A host_reply whose id names no host call sent and not yet answered is
  // dropped. The host may send them without end (a bug, or on purpose), so
  // the log gets the first of them and then one line at the 10th, 100th,
  // 1000th, ..., each with the count so far; the id is quoted briefly. The
  // late reply to a host call whose wait was given up is no stray: it frees
  // the call's place, and is dropped without a line.
  _onStrayHostReply(id) {
    const count = ++this._strayHostReplies;
    if (count === 1) {
      this.log.warn(`host_reply ${shown(id)} matches no waiting host call; dropped ` +
        '(the next such replies are counted, and logged at the 10th, 100th, 1000th, ...)');
    } else if (/^10+$/.test(String(count))) {
      this.log.warn(`${count} host_replies matching no waiting host call dropped so far (the last: ${shown(id)})`);
    }
  }

  _failHostCalls(ctx, makeError) {
    if (ctx._hostCalls === null || ctx._hostCalls.size === 0) return;
    for (const id of ctx._hostCalls) {
      const pending = this._hostCalls.get(id);
      this._hostCalls.delete(id);
      // A held call is never sent; a sent one stays in _hostWaiting.
      this._hostHeld.delete(id);
      if (pending) pending.reject(makeError());
    }
    ctx._hostCalls.clear();
  }

  // -- shutdown -------------------------------------------------------------

  // An uncaught exception ends the worker (exit 1; the pool replaces it), as
  // Node's default does, unless the application has its own handler for it:
  // then that handler decides. Frames already made go out first, unless
  // the exception came from writing one (half a frame may be out).
  _exitOnUncaught(err) {
    if (process.listeners('uncaughtException').some((l) => l !== onUncaughtException)) return;
    try {
      const write = this._write;
      if (!this._writingFrames()) {
        if (write !== null && typeof write.flush === 'function') write.flush();
        if (this._output !== null) this._output.drainSync();
      }
    } catch (_) {
      // stdout is gone: nothing more can be written there
    }
    try {
      this.log.error(`uncaught exception; the worker exits: ${describeThrown(err)}`);
    } catch (_) {
      // stderr is gone
    }
    process.exit(1);
  }

  _onInputEnd() {
    this._inputEnded = true;
    // No host_reply can arrive any more; fail the waits instead of hanging.
    for (const ctx of this._running.values()) {
      this._failHostCalls(ctx, () => new HostCallError('HostUnavailable', 'stdin is closed: the pool cannot answer'));
    }
    this._checkDrained();
  }

  _checkDrained() {
    if (this._inputEnded && this._running.size === 0 && this._drained !== null) {
      const resolve = this._drained;
      this._drained = null;
      resolve();
    }
  }
}

// The bridge rejects host-call promises itself (on cancel, on finish, on
// EOF). A handler that fired a call and never awaited it must not crash the
// worker with an unhandled rejection; awaiting it still throws.
function handled(promise) {
  promise.catch(() => {});
  return promise;
}

function success(id, result) {
  return { id, success: true, result: result === undefined ? null : result };
}

function failure(id, type, message) {
  return { id, success: false, error: { type, message } };
}

module.exports = {
  Worker,
  Context,
  CancelledError,
  HostCallError,
  BRIDGE_NAME,
  BRIDGE_VERSION,
  DEFAULT_MAX_CONCURRENCY,
  protectStdout,
  protectStdin,
  errorToWire,
};
