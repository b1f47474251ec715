"""A worker whose handler makes its own OpenTelemetry span.

The spans go to the OTLP/HTTP receiver named by SNAKEPIT_TEST_OTLP_HTTP
(for example http://127.0.0.1:4318) as OTLP JSON, one request per span as
soon as it ends, with nothing but opentelemetry-sdk and the standard
library. The bridge itself opens the `snakepit.worker <command>` span from
the request's traceparent; the handler's span is its child.
"""

import json
import os
import urllib.request

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import snakepit_bridge


def _value(v):
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def _attributes(attrs):
    return [{"key": k, "value": _value(v)} for k, v in (attrs or {}).items()]


class OtlpJsonExporter(SpanExporter):
    def __init__(self, base):
        self.url = base.rstrip("/") + "/v1/traces"

    def export(self, spans):
        resource_spans = []
        for span in spans:
            ctx = span.get_span_context()
            out = {
                "traceId": "%032x" % ctx.trace_id,
                "spanId": "%016x" % ctx.span_id,
                "name": span.name,
                "kind": span.kind.value + 1,  # OTLP counts UNSPECIFIED as 0
                "startTimeUnixNano": str(span.start_time),
                "endTimeUnixNano": str(span.end_time),
                "attributes": _attributes(span.attributes),
            }
            if span.parent is not None:
                out["parentSpanId"] = "%016x" % span.parent.span_id
            resource_spans.append(
                {
                    "resource": {"attributes": _attributes(span.resource.attributes)},
                    "scopeSpans": [{"scope": {"name": span.instrumentation_scope.name}, "spans": [out]}],
                }
            )
        body = json.dumps({"resourceSpans": resource_spans}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                reply.read()
        except OSError as exc:
            print("span export failed: %s" % exc)  # goes to stderr
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


provider = TracerProvider(resource=Resource.create({"service.name": "snakepit-e2e-python"}))
provider.add_span_processor(SimpleSpanProcessor(OtlpJsonExporter(os.environ["SNAKEPIT_TEST_OTLP_HTTP"])))
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
            "trace_id": "%032x" % sc.trace_id,
            "span_id": "%016x" % sc.span_id,
        }


worker.run()
