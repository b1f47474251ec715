# outside_telemetry.rs: a Ruby handler that reports the trace context its
# request carried (ctx.traceparent, ctx.tracestate, ctx.baggage), and the
# carrier bridges/ruby/README.md builds from them for
# OpenTelemetry.propagation.extract (`.compact` drops what is nil).
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

worker.command("context") do |_args, ctx|
  carrier = { "traceparent" => ctx.traceparent, "tracestate" => ctx.tracestate,
              "baggage" => ctx.baggage }.compact
  {
    "traceparent" => ctx.traceparent,
    "tracestate" => ctx.tracestate,
    "baggage" => ctx.baggage,
    "carrier" => carrier,
  }
end

worker.run
