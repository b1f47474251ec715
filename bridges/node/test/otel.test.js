'use strict';

// With @opentelemetry/api installed, a request's traceparent makes the
// handler run inside a span `snakepit.worker <command>` whose parent is the
// caller's span, so the spans a handler makes join the caller's trace.

const test = require('node:test');
const assert = require('node:assert/strict');
const { PassThrough } = require('node:stream');
const { setTimeout: sleep } = require('node:timers/promises');

const api = require('@opentelemetry/api');
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
const {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} = require('@opentelemetry/sdk-trace-base');

const wire = require('../lib/wire');
const { Worker } = require('../lib');

const exporter = new InMemorySpanExporter();
api.trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const tracer = api.trace.getTracer('handler');

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const CALLER = '00f067aa0ba902b7';
const TP = `00-${TRACE}-${CALLER}-01`;

function harness(commands) {
  const codec = wire.getCodec('json');
  const worker = new Worker({ codec: 'json', commands });
  const input = new PassThrough();
  const replies = new Map();
  const waiters = new Map();
  const reader = new wire.FrameReader({
    onFrame: (payload) => {
      const frame = wire.validateToPool(codec.decodePayload(payload));
      if (waiters.has(frame.id)) waiters.get(frame.id)(frame);
      else replies.set(frame.id, frame);
    },
    onError: (err) => {
      throw err;
    },
  });
  const done = worker.serve({ input, write: (frame) => reader.push(Buffer.from(frame)) });
  return {
    call(id, command, extra = {}) {
      input.write(codec.encodeFrame({ id, command, args: {}, ...extra }));
      if (replies.has(id)) return Promise.resolve(replies.get(id));
      return new Promise((resolve) => waiters.set(id, resolve));
    },
    async close() {
      input.end();
      await done;
    },
  };
}

function spanNamed(name) {
  const span = exporter.getFinishedSpans().find((s) => s.name === name);
  assert.ok(span, `no span ${name} among ${exporter.getFinishedSpans().map((s) => s.name)}`);
  return span;
}

function parentId(span) {
  // sdk-trace-base 2.x names the parent by its span context.
  return span.parentSpanContext ? span.parentSpanContext.spanId : span.parentSpanId;
}

test('spans made in sync and async handlers join the caller trace', async () => {
  exporter.reset();
  const h = harness({
    sync: () => {
      tracer.startActiveSpan('sync.work', (span) => span.end());
      return 'ok';
    },
    async: async () => {
      await sleep(5);
      return tracer.startActiveSpan('async.work', async (span) => {
        await sleep(5);
        span.end();
        return 'ok';
      });
    },
  });
  assert.equal((await h.call(1, 'sync', { traceparent: TP })).result, 'ok');
  assert.equal((await h.call(2, 'async', { traceparent: TP, tracestate: 'vendor=x' })).result, 'ok');
  await h.close();

  for (const [command, child] of [['sync', 'sync.work'], ['async', 'async.work']]) {
    const request = spanNamed(`snakepit.worker ${command}`);
    assert.equal(request.spanContext().traceId, TRACE);
    assert.equal(parentId(request), CALLER);
    assert.equal(request.kind, api.SpanKind.SERVER);
    const work = spanNamed(child);
    assert.equal(work.spanContext().traceId, TRACE);
    assert.equal(parentId(work), request.spanContext().spanId);
  }
  assert.equal(spanNamed('snakepit.worker async').spanContext().traceState.get('vendor'), 'x');
});

test('a failing handler marks its span as an error; no traceparent, no span', async () => {
  exporter.reset();
  const h = harness({
    boom: () => {
      throw new Error('kaboom');
    },
    plain: () => 1,
  });
  const r = await h.call(1, 'boom', { traceparent: TP });
  assert.equal(r.success, false);
  assert.equal((await h.call(2, 'plain')).result, 1);
  assert.equal((await h.call(3, 'plain', { traceparent: 'not-a-traceparent' })).result, 1);
  await h.close();
  const span = spanNamed('snakepit.worker boom');
  assert.equal(span.status.code, api.SpanStatusCode.ERROR);
  assert.equal(span.status.message, 'kaboom');
  assert.deepStrictEqual(
    exporter.getFinishedSpans().map((s) => s.name),
    ['snakepit.worker boom']
  );
});

test('the caller context is read by the registered propagator', async () => {
  exporter.reset();
  const core = require('@opentelemetry/core');
  const seen = [];
  const w3c = new core.W3CTraceContextPropagator();
  api.propagation.setGlobalPropagator({
    inject: (context, carrier, setter) => w3c.inject(context, carrier, setter),
    extract: (context, carrier, getter) => {
      seen.push({ ...carrier });
      return w3c.extract(context, carrier, getter);
    },
    fields: () => w3c.fields(),
  });
  try {
    const h = harness({ plain: () => 1 });
    assert.equal((await h.call(1, 'plain', { traceparent: TP, tracestate: 'vendor=x' })).result, 1);
    await h.close();
  } finally {
    api.propagation.disable();
  }
  assert.deepStrictEqual(seen, [{ traceparent: TP, tracestate: 'vendor=x' }]);
  const span = spanNamed('snakepit.worker plain');
  assert.equal(parentId(span), CALLER);
  assert.equal(span.spanContext().traceState.get('vendor'), 'x');
});
