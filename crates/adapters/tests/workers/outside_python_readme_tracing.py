"""bridges/python/README.md, "Tracing": a worker whose process has an
OpenTelemetry SDK tracer provider; its command reports the span it runs in
(tests/outside_python_readme.rs)."""

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import snakepit_bridge

trace.set_tracer_provider(TracerProvider())

worker = snakepit_bridge.Worker()


def report(ctx):
    current = trace.get_current_span()
    sc = current.get_span_context()
    parent = getattr(current, "parent", None)
    # A span the handler creates joins the caller's trace.
    with trace.get_tracer("opr").start_as_current_span("mine") as mine:
        child_trace = format(mine.get_span_context().trace_id, "032x")
        child_parent = format(mine.parent.span_id, "016x") if mine.parent is not None else None
    return {
        "child_trace_id": child_trace,
        "child_parent_is_the_handlers": child_parent == format(sc.span_id, "016x"),
        "traced": bool(sc.is_valid),
        "recording": current.is_recording(),
        "name": getattr(current, "name", None),
        "trace_id": format(sc.trace_id, "032x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "traceparent": ctx.traceparent,
    }


@worker.command("span")
def span(args, ctx):
    return report(ctx)


if os.environ.get("OPR_MODE") == "async":

    @worker.command("span_async")
    async def span_async(args, ctx):
        return report(ctx)


if __name__ == "__main__":
    worker.run()
