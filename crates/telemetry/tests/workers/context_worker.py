"""A worker that answers with the trace context its request carried."""

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("context")
def context(args, ctx):
    try:
        from opentelemetry import baggage, context
        # The bridge made the caller's context current: its baggage is here.
        seen = baggage.get_baggage("tenant", context.get_current())
    except ImportError:
        seen = None
    return {"traceparent": ctx.traceparent, "tracestate": ctx.tracestate,
            "baggage": ctx.baggage, "tenant": seen}


worker.run()
