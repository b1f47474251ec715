"""Handlers whose results, errors, chunks and host calls are sized by the
caller, for outside_readme_round5.rs (README: max_frame_size and the
ResultTooLarge entry of Troubleshooting). With R5_ASYNC=1 the worker runs in
asyncio mode (max_concurrency 4) and its handlers are `async def`."""
import os

import snakepit_bridge

ASYNC = os.environ.get("R5_ASYNC") == "1"
worker = snakepit_bridge.Worker(max_concurrency=4) if ASYNC else snakepit_bridge.Worker()


@worker.command("pid")
def pid(args):
    return {"pid": os.getpid(), "limit": os.environ.get("SNAKEPIT_MAX_FRAME_SIZE")}


def sized(args):
    return args.get("text", "x") * args["n"]


def length(args):
    return {"len": len(args["s"])}


def fail_long(args):
    raise ValueError(args.get("text", "y") * args["n"])


def chunks(args, ctx):
    sent = 0
    for _ in range(args["count"]):
        if ctx.emit("c" * args["size"]) is not False:
            sent += 1
    return {"sent": sent}


def big_chunk(args, ctx):
    ctx.emit("small")
    try:
        ctx.emit(args.get("text", "c") * args["n"])
    except snakepit_bridge.ResultTooLarge:
        return {"caught": "ResultTooLarge"}
    return {"caught": None}


def set_big(args, ctx):
    try:
        ctx.session.set("k", args.get("text", "z") * args["n"])
    except snakepit_bridge.HostCallError as e:
        return {"error": e.type}
    return {"error": None}


async def aset_big(args, ctx):
    try:
        await ctx.session.aset("k", args.get("text", "z") * args["n"])
    except snakepit_bridge.HostCallError as e:
        return {"error": e.type}
    return {"error": None}


def host_big(args, ctx):
    try:
        got = ctx.call_host("big", {"n": args["n"]})
    except snakepit_bridge.HostCallError as e:
        return {"error": e.type}
    return {"len": len(got)}


async def ahost_big(args, ctx):
    try:
        got = await ctx.acall_host("big", {"n": args["n"]})
    except snakepit_bridge.HostCallError as e:
        return {"error": e.type}
    return {"len": len(got)}


def as_async(handler):
    """`handler` as an `async def` handler taking the same arguments."""
    if handler.__code__.co_argcount == 2:
        async def run(args, ctx):
            return handler(args, ctx)
    else:
        async def run(args):
            return handler(args)
    return run


for name, handler in [("sized", sized), ("length", length), ("fail_long", fail_long),
                      ("chunks", chunks), ("big_chunk", big_chunk)]:
    worker.command(name)(as_async(handler) if ASYNC else handler)
worker.command("set_big")(aset_big if ASYNC else set_big)
worker.command("host_big")(ahost_big if ASYNC else host_big)

worker.run()
