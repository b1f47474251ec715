"""Handlers for outside_readme_round6.rs (README.md and ARCHITECTURE.md as
promises): many host calls at once, fast streams, and a death after
writing to stderr. With R6_ASYNC=1 the worker runs in asyncio mode
(max_concurrency 4) and `many_host` is `async def`."""
import asyncio
import os
import sys
import threading

import snakepit_bridge

ASYNC = os.environ.get("R6_ASYNC") == "1"
worker = snakepit_bridge.Worker(max_concurrency=4) if ASYNC else snakepit_bridge.Worker()


@worker.command("pid")
def pid(args):
    return {"pid": os.getpid()}


if ASYNC:

    @worker.command("many_host")
    async def many_host(args, ctx):
        got = await asyncio.gather(
            *(ctx.acall_host("echo", {"i": i}) for i in range(args["n"]))
        )
        return {"sum": sum(g["i"] for g in got)}

    @worker.command("many_gets")
    async def many_gets(args, ctx):
        got = await asyncio.gather(*(ctx.session.aget("k%d" % i) for i in range(args["n"])))
        return {"nulls": sum(1 for g in got if g is None)}

else:

    @worker.command("many_host")
    def many_host(args, ctx):
        # Host calls from threads the handler starts, all at once.
        got = [None] * args["n"]

        def one(i):
            got[i] = ctx.call_host("echo", {"i": i})

        threads = [threading.Thread(target=one, args=(i,)) for i in range(args["n"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"sum": sum(g["i"] for g in got if g is not None)}


MARKS = [0]


@worker.command("sleep")
def sleep(args):
    import time

    time.sleep(args["ms"] / 1000.0)
    return {"pid": os.getpid()}


@worker.command("mark")
def mark(args):
    MARKS[0] += 1
    return {"marks": MARKS[0]}


@worker.command("marks")
def marks(args):
    return {"marks": MARKS[0]}


@worker.command("chunks")
def chunks(args, ctx):
    sent = 0
    for i in range(args["count"]):
        if ctx.emit({"n": i}) is not False:
            sent += 1
    return {"sent": sent}


@worker.command("stderr_then_die")
def stderr_then_die(args):
    sys.stderr.write("L" * args["long"] + "\n")
    sys.stderr.write("step-one\rstep-two\rstep-three\n")
    sys.stderr.flush()
    os._exit(7)


worker.run()
