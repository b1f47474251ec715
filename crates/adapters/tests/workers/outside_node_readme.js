// A worker for outside_node_readme.rs: the promises of bridges/node/README.md
// that its example does not show. Options come from the environment, so the
// same script serves every test:
//   ONR_MAX_FRAME      maxFrameSize
//   ONR_MAX_CONC       maxConcurrency (a JavaScript expression)
//   ONR_NAME           name
//   ONR_OTEL=1         register an OpenTelemetry SDK recording spans in memory
//   ONR_OWN_UNCAUGHT=1 an uncaughtException listener of the script's own
//   ONR_EXIT_FALSE=1   run({ exit: false }), then exit with 42 once it resolved
//   ONR_SIGINT=1       sigint: true
//   ONR_OWN_PING=1     a ping of the script's own
'use strict';

const { Worker, CancelledError, HostCallError } = require('snakepit-bridge');
const fs = require('fs');
const { setTimeout: sleep } = require('timers/promises');

let exporter = null;
let tracer = null;
if (process.env.ONR_OTEL === '1') {
  const api = require('@opentelemetry/api');
  const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
  const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');
  exporter = new InMemorySpanExporter();
  api.trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
  api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  tracer = api.trace.getTracer('handler');
}

const state = { caught: [], started: [], active: 0, most: 0, lastCancel: null };

if (process.env.ONR_OWN_UNCAUGHT === '1') {
  process.on('uncaughtException', (err) => state.caught.push(err.message));
}

class ModelError extends Error {}
class BadInput extends TypeError {}
class Named extends Error {
  constructor(message) {
    super(message);
    this.name = 'Custom';
  }
}

function thrown(kind) {
  switch (kind) {
    case 'model':
      return new ModelError('the model is missing');
    case 'typeSub':
      return new BadInput('bad input');
    case 'named':
      return new Named('named');
    case 'surrogate': {
      const e = new Error('half \ud83d here');
      e.name = 'Bad\ud800';
      return e;
    }
    case 'getter': {
      const e = new Error('hidden');
      Object.defineProperty(e, 'message', {
        get() {
          throw new Error('no message for you');
        },
      });
      return e;
    }
    case 'getterSub': {
      class Unreadable extends Error {
        get message() {
          throw new Error('no message for you');
        }
      }
      return new Unreadable();
    }
    case 'getterObject':
      return {
        get message() {
          throw new Error('no message for you');
        },
      };
    case 'proxy':
      return new Proxy(new Error('hidden'), {
        get() {
          throw new Error('no property for you');
        },
      });
    default:
      return new Error(`unknown kind ${kind}`);
  }
}

function cycle() {
  const o = { a: 1 };
  o.self = o;
  return o;
}

// What a host call made with `args` did: its result, or the error it
// rejected with.
async function tryHost(ctx, fn, args) {
  try {
    return { ok: await ctx.callHost(fn, args) };
  } catch (e) {
    return {
      err: {
        host_call_error: e instanceof HostCallError,
        name: e.name,
        type: e.type === undefined ? null : e.type,
        message: e.message,
      },
    };
  }
}

const options = {
  commands: {
    pid: () => ({ pid: process.pid }),
    echo: (args) => args,
    state: () => ({ pid: process.pid, ...state }),

    async slow(args, ctx) {
      if (args.mark) fs.writeFileSync(args.mark, 'started');
      state.started.push(ctx.requestId);
      state.active++;
      state.most = Math.max(state.most, state.active);
      try {
        await sleep(args.ms || 0);
      } finally {
        state.active--;
      }
      return { id: ctx.requestId, started: state.started.slice(), most: state.most };
    },

    // What a handler sees of its context, and a line of each level of its log.
    context(args, ctx) {
      ctx.log.debug('log-debug');
      ctx.log.info('log-info', { n: 1 });
      ctx.log.warn('log-warn');
      ctx.log.error('log-error');
      return {
        worker_id: ctx.workerId,
        worker_id_alias: ctx.worker_id,
        command: ctx.command,
        is_worker: ctx.worker instanceof Worker,
        pid: process.pid,
      };
    },

    errors(args) {
      throw thrown(args.kind);
    },
    async rejects(args) {
      await sleep(1);
      throw thrown(args.kind);
    },

    // Host calls that fail, or cannot be sent.
    async hostFailures(args, ctx) {
      const out = {
        fails: await tryHost(ctx, 'fails', { id: 'x' }),
        cycle: await tryHost(ctx, 'count', cycle()),
        surrogate: await tryHost(ctx, 'count', { s: 'caf\ud800' }),
        after: await tryHost(ctx, 'count', { fine: true }),
      };
      if (args.bytes) out.bytes = await tryHost(ctx, 'count', { b: Buffer.from([1, 2, 3]) });
      return out;
    },
    async hostEscapes(args, ctx) {
      return ctx.callHost('fails', { id: 'y' });
    },

    // A stream whose handler waits on a host call when the call is given up.
    async hostCancel(args, ctx) {
      let fired = false;
      ctx.signal.addEventListener('abort', () => {
        fired = true;
      });
      ctx.sendChunk({ started: true });
      const seen = { fired_before: fired, cancelled_before: ctx.cancelled };
      try {
        await ctx.callHost('slow', { ms: args.ms });
        seen.host_call = 'answered';
      } catch (e) {
        seen.host_call = [e instanceof CancelledError, e.name];
      }
      seen.fired = fired;
      seen.cancelled = ctx.cancelled;
      seen.aborted = ctx.signal.aborted;
      seen.chunk_after = ctx.sendChunk('late');
      try {
        ctx.throwIfCancelled();
        seen.throw_if_cancelled = null;
      } catch (e) {
        seen.throw_if_cancelled = [e instanceof CancelledError, e.name];
      }
      state.lastCancel = seen;
      return { late: true };
    },

    // Holds the thread for `ms` without awaiting.
    block(args) {
      if (args.mark) fs.writeFileSync(args.mark, 'started');
      const end = Date.now() + args.ms;
      while (Date.now() < end);
      return { blocked: args.ms };
    },

    // Keeps its context and sends a chunk once its reply has gone out.
    lateChunk(args, ctx) {
      ctx.sendChunk('early');
      setTimeout(() => {
        state.lateChunk = ctx.sendChunk('after the reply');
      }, 50);
      return 'replied';
    },

    // Waits on a host call nobody answers; reports how it ended.
    async hostWait(args, ctx) {
      try {
        return { answered: await ctx.callHost('never', {}) };
      } catch (e) {
        return { rejected: [e.constructor.name, e.name] };
      }
    },

    // A child process given the call's signal, as the README suggests.
    async child(args, ctx) {
      const { spawn } = require('child_process');
      const child = spawn('sleep', ['30'], { signal: ctx.signal, stdio: ['ignore', 2, 2] });
      state.childPid = child.pid;
      const how = await new Promise((resolve) => {
        child.on('error', (e) => resolve(`error ${e.name}`));
        child.on('exit', (code, signal) => resolve(`exit ${code} ${signal}`));
      });
      state.childEnd = how;
      return { how };
    },

    // A throw nobody catches in a microtask queued before the reply is
    // written: the reply, already made, goes out before the worker exits.
    microtaskThrow() {
      queueMicrotask(() => {
        throw new Error('thrown in a microtask');
      });
      return { pid: process.pid };
    },

    // A throw in a timer's callback: nobody catches it.
    timerThrow() {
      setTimeout(() => {
        throw new Error('thrown in a timer');
      }, 10);
      return { pid: process.pid };
    },

    // Tracing.
    async traced(args, ctx) {
      await sleep(5);
      tracer.startActiveSpan('handler.child', (span) => span.end());
      return { traceparent: ctx.traceparent };
    },
    async tracedFail() {
      await sleep(5);
      throw new Error('traced failure');
    },
    spans() {
      const out = exporter.getFinishedSpans().map((s) => ({
        name: s.name,
        kind: s.kind,
        trace_id: s.spanContext().traceId,
        span_id: s.spanContext().spanId,
        parent: s.parentSpanContext ? s.parentSpanContext.spanId : s.parentSpanId || null,
        status: s.status.code,
      }));
      exporter.reset();
      return out;
    },
    otelLoaded(args, ctx) {
      return {
        traceparent: ctx.traceparent,
        loaded: Object.keys(require.cache).filter((k) => k.includes('opentelemetry')),
        msgpack_loaded: Object.keys(require.cache).some((k) => k.includes('@msgpack')),
      };
    },

    // MessagePack map keys and ext values, as they reach the handler.
    keys(args) {
      const m = args.m;
      const keys = Object.keys(m).map((k) => [k, m[k], Buffer.from(k, 'latin1').toString('hex')]);
      const info = JSON.stringify({
        plain: Object.getPrototypeOf(m) === Object.prototype,
        keys,
        ext_class: args.x && args.x.constructor ? args.x.constructor.name : null,
      });
      return { info: `ONR${info}ONR`, x: args.x };
    },
  },
};
if (process.env.ONR_MAX_FRAME) options.maxFrameSize = Number(process.env.ONR_MAX_FRAME);
// eslint-disable-next-line no-eval
if (process.env.ONR_MAX_CONC) options.maxConcurrency = eval(process.env.ONR_MAX_CONC);
if (process.env.ONR_NAME) options.name = process.env.ONR_NAME;
if (process.env.ONR_SIGINT === '1') options.sigint = true;
if (process.env.ONR_OWN_PING === '1') {
  options.commands.ping = (args, ctx) => ({ status: 'ok', mine: true, args, worker_id: ctx.workerId });
}

const worker = new Worker(options);
if (process.env.ONR_EXIT_FALSE === '1') {
  worker.run({ exit: false }).then(() => {
    process.stderr.write('run() resolved\n');
    process.exit(42);
  });
} else {
  worker.run();
}
