"""A worker whose results can be far bigger than its arguments, for the
cluster's tests of NATS's max_payload."""
import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("big")
def big(args, ctx):
    """A result of `bytes` characters from arguments of a few bytes."""
    return {"data": "x" * args.get("bytes", 0), "pid": os.getpid()}


@worker.command("echo")
def echo(args, ctx):
    return {"echoed": args, "pid": os.getpid()}


@worker.command("sleep")
def sleep(args, ctx):
    """Sleeps `ms`; with `beat`, streams one chunk first (so the caller
    knows its host has answered); with `marker`, writes that file first."""
    if args.get("marker"):
        with open(args["marker"], "w") as f:
            f.write("started")
    if args.get("beat"):
        ctx.emit({"started": os.getpid()})
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"pid": os.getpid()}


worker.run()
