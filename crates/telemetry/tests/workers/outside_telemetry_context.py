"""outside_telemetry.rs: a worker that reports the trace context its
request carried and the span the bridge opened for it.

An SDK tracer provider is set (no exporter: nothing leaves the process),
so that the bridge's `snakepit.worker <command>` span is a real span whose
trace, parent and sampling flag the handler can read and send back.
"""

from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())

import snakepit_bridge  # noqa: E402  (after the provider, as the docs say)

worker = snakepit_bridge.Worker()


@worker.command("context")
def report(args, ctx):
    span = trace.get_current_span()
    sc = span.get_span_context()
    parent = getattr(span, "parent", None)
    return {
        "traceparent": ctx.traceparent,
        "tracestate": ctx.tracestate,
        "baggage": ctx.baggage,
        # The bridge made the caller's context current: its baggage, if any.
        "tenant": baggage.get_baggage("tenant", context.get_current()),
        "span_name": getattr(span, "name", None),
        "trace_id": "%032x" % sc.trace_id if sc.is_valid else None,
        "parent_id": "%016x" % parent.span_id if parent is not None else None,
        "sampled": bool(sc.trace_flags.sampled) if sc.is_valid else None,
    }


@worker.command("fail")
def fail(args):
    raise ValueError("failed on purpose")


worker.run()
