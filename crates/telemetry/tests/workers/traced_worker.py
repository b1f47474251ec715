"""A worker whose handler makes its own OpenTelemetry span, set up as
docs/telemetry.md tells users: opentelemetry-sdk and the OTLP exporter
(`pip install opentelemetry-sdk opentelemetry-exporter-otlp`), configured by
the standard variables the worker inherits or its adapter sets
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME).

The bridge itself opens the `snakepit.worker <command>` span from the
request's trace context; the handler's span is its child. Spans are
exported as each ends (SimpleSpanProcessor), so that a test reads them back
as soon as the call has returned.
"""

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import snakepit_bridge

provider = TracerProvider(resource=Resource.create())
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("traced_worker")

worker = snakepit_bridge.Worker()


@worker.command("traced")
def traced(args, ctx):
    with tracer.start_as_current_span("handler.work") as span:
        span.set_attribute("token", args.get("token", ""))
        sc = span.get_span_context()
        return {
            "traceparent": ctx.traceparent,
            "tracestate": ctx.tracestate,
            "trace_id": "%032x" % sc.trace_id,
            "span_id": "%016x" % sc.span_id,
        }


@worker.command("fail")
def fail(args):
    raise ValueError("the handler failed on purpose")


worker.run()
