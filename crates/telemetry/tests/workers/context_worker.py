"""A worker that answers with the trace context its request carried."""

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("context")
def context(args, ctx):
    return {"traceparent": ctx.traceparent, "tracestate": ctx.tracestate}


worker.run()
