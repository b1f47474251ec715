"""A worker whose handlers make many host calls at once, for the tests of
the cap on host calls waiting for their replies (test_host_call_cap.py).
HOST_CAP_MODE=sync (one call at a time, the default) or concurrent
(max_concurrency=16: async handlers and plain ones on threads).

The host function is ``echo``: the test's fake pool answers each host call
with its arguments. Each handler returns, per host call in the order made,
the result it got, or the class of the exception it raised."""

import asyncio
import os
import threading

import snakepit_bridge

MODE = os.environ.get("HOST_CAP_MODE", "sync")
worker = snakepit_bridge.Worker(max_concurrency=16 if MODE == "concurrent" else None)


def _attempt(ctx, args):
    try:
        return ctx.call_host("echo", args)
    except Exception as exc:  # reported to the test
        return {"raised": type(exc).__name__}


async def _aattempt(ctx, args):
    try:
        return await ctx.acall_host("echo", args)
    except Exception as exc:  # reported to the test
        return {"raised": type(exc).__name__}


@worker.command("threads")
def threads(args, ctx):
    """``n`` threads each make one host call, all at once."""
    n = args["n"]
    results = [None] * n

    def one(i):
        results[i] = _attempt(ctx, {"tag": args.get("tag"), "i": i})

    started = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    return results


async def gather(args, ctx):
    """``n`` host calls at once, with asyncio.gather."""
    tag = args.get("tag")
    return list(await asyncio.gather(*(_aattempt(ctx, {"tag": tag, "i": i}) for i in range(args["n"]))))


if MODE == "concurrent":
    # An async handler puts the worker in asyncio mode: only in that mode.
    worker.command("gather")(gather)


if __name__ == "__main__":
    worker.run()
