"""A worker for the round-5 cluster tests: streams whose chunks can be far
bigger than their arguments."""
import os

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("bigstream")
def bigstream(args, ctx):
    """Streams `n` chunks; the one at `big_at` carries `bytes` characters,
    the others a few bytes."""
    for i in range(args.get("n", 3)):
        data = "x" * args.get("bytes", 0) if i == args.get("big_at") else ""
        ctx.emit({"i": i, "data": data})
    return {"done": args.get("n", 3), "pid": os.getpid()}


@worker.command("echo")
def echo(args, ctx):
    return {"echoed": args, "pid": os.getpid()}


worker.run()
