# docs/bridges.md, "The context, side by side": a handler that reports
# what its context says (tests/context_promises.rs).
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

worker.command("context") do |_args, ctx|
  ctx.logger.info("context of request #{ctx.request_id}") # stderr, not the frames
  ctx.check_cancelled! # not cancelled: returns
  host_error =
    begin
      ctx.call_host("no.such", {})
      nil
    rescue SnakepitBridge::HostCallError => e
      ["HostCallError", e.error_type]
    end
  ctx.chunk("partial") # always sent; the pool drops it unless the caller streams
  {
    "request_id" => ctx.request_id,
    "command" => ctx.command,
    "session_id" => ctx.session_id,
    "worker_id" => ctx.worker_id,
    "traceparent" => ctx.traceparent,
    "timeout_ms" => ctx.timeout_ms,
    "stream" => ctx.stream?,
    "cancelled" => ctx.cancelled?,
    "host_error" => host_error,
  }
end

worker.run
