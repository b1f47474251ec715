"""A worker used by the end-to-end tests: streaming, host calls, cancel,
raising, printing. EXAMPLE_MODE=async adds async handlers (asyncio mode)."""

import asyncio
import os
import time

import snakepit_bridge
from snakepit_bridge import generic

worker = snakepit_bridge.Worker()
generic.register(worker)


@worker.command("shout")
def shout(args):
    print("user print goes to stderr:", args.get("text"))
    os.write(1, b"raw write to fd 1 goes to stderr too\n")
    return args.get("text", "").upper()


@worker.command("stream")
def stream(args, ctx):
    n = args.get("n", 3)
    for i in range(n):
        ctx.emit({"i": i})
    return {"count": n, "streamed": ctx.stream}


@worker.command("boom")
def boom(args):
    raise RuntimeError("kaboom")


@worker.command("sleep")
def sleep(args, ctx):
    time.sleep(args.get("seconds", 30))
    return "slept"


@worker.command("flood")
def flood(args, ctx):
    # Large chunks until cancelled: SIGINT must never cut a frame in half.
    block = "x" * args.get("size", 65536)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ctx.emit(block)
    return "not cancelled"


@worker.command("poll_cancel")
def poll_cancel(args, ctx):
    deadline = time.monotonic() + args.get("seconds", 30)
    while time.monotonic() < deadline:
        ctx.check_cancelled()
        time.sleep(0.01)
    return "not cancelled"


@worker.command("session_roundtrip")
def session_roundtrip(args, ctx):
    ctx.session.set("k", args["value"])
    got = ctx.session.get("k")
    deleted = ctx.session.delete("k")
    return {"got": got, "deleted": deleted}


@worker.command("host_fail")
def host_fail(args, ctx):
    try:
        ctx.call_host("nope", {"x": 1})
    except snakepit_bridge.HostCallError as exc:
        return {"type": exc.type, "message": exc.message}
    return "no error?"


@worker.command("ctx_info")
def ctx_info(args, ctx):
    ctx.logger.info("ctx_info called")
    return {"request_id": ctx.request_id, "session_id": ctx.session_id,
            "worker_id": ctx.worker_id, "traceparent": ctx.traceparent,
            "stream": ctx.stream, "cancelled": ctx.cancelled}


@worker.command("binary")
def binary(args):
    return bytes([0, 1, 254, 255])


if os.environ.get("EXAMPLE_MODE") == "async":

    @worker.command("asleep")
    async def asleep(args, ctx):
        await asyncio.sleep(args.get("seconds", 30))
        return "slept"

    @worker.command("asession")
    async def asession(args, ctx):
        await ctx.session.aset("k", args["value"])
        return await ctx.session.aget("k")

    @worker.command("astream")
    async def astream(args, ctx):
        for i in range(args.get("n", 3)):
            ctx.emit(i)
            await asyncio.sleep(0)
        return "done"

    @worker.command("araise")
    async def araise(args):
        raise ValueError("async failure")

if __name__ == "__main__":
    worker.run()
