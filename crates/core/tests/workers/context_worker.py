"""docs/bridges.md, "The context, side by side": a handler that reports
what its context says (tests/context_promises.rs)."""
import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("context")
def context(args, ctx):
    ctx.logger.info("context of request %s", ctx.request_id)  # stderr, not the frames
    ctx.check_cancelled()  # not cancelled: returns
    try:
        ctx.call_host("no.such", {})
        host_error = None
    except snakepit_bridge.HostCallError as e:
        host_error = [type(e).__name__, e.type]
    return {
        "request_id": ctx.request_id,
        "command": ctx.command,
        "session_id": ctx.session_id,
        "worker_id": ctx.worker_id,
        "traceparent": ctx.traceparent,
        "timeout_ms": ctx.timeout_ms,
        "stream": ctx.stream,
        "cancelled": ctx.cancelled,
        "emitted": ctx.emit("partial"),
        "host_error": host_error,
    }


if __name__ == "__main__":
    worker.run()
