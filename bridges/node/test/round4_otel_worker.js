'use strict';

// A worker whose application registered OpenTelemetry code that throws: a
// propagator that throws on the traceparent `throw-me` (as one may on a
// malformed header) and reads W3C trace context otherwise, and a tracer
// whose spans throw from setStatus and end.

const api = require('@opentelemetry/api');
const core = require('@opentelemetry/core');
const { Worker } = require('snakepit-bridge');

const w3c = new core.W3CTraceContextPropagator();
api.propagation.setGlobalPropagator({
  inject: (context, carrier, setter) => w3c.inject(context, carrier, setter),
  extract(context, carrier, getter) {
    if (carrier.traceparent === 'throw-me') throw new URIError('URI malformed');
    return w3c.extract(context, carrier, getter);
  },
  fields: () => w3c.fields(),
});

function throwingSpan() {
  const context = { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b8', traceFlags: 1 };
  return {
    spanContext: () => context,
    setAttribute() { return this; },
    setAttributes() { return this; },
    addEvent() { return this; },
    recordException() { throw new Error('recordException failed'); },
    setStatus() { throw new Error('setStatus failed'); },
    updateName() { return this; },
    isRecording: () => true,
    end() { throw new Error('end failed'); },
  };
}
api.trace.setGlobalTracerProvider({ getTracer: () => ({ startSpan: throwingSpan }) });

new Worker({
  commands: {
    plain: () => 'plain',
    boom() {
      throw new Error('kaboom');
    },
    later: async () => 'later',
  },
}).run();
