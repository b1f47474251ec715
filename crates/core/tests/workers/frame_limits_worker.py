"""A bridge worker for the tests of a pool's `max_frame_size`: a reply as
large as asked, and a count of the calls this process received (so a test
can tell that a refused request never reached it).
"""
import os

import snakepit_bridge

worker = snakepit_bridge.Worker()
received = 0


@worker.command("big")
def big(args, ctx):
    """A reply whose `data` is `bytes` characters long."""
    global received
    received += 1
    return {"data": "x" * args["bytes"], "pid": os.getpid()}


@worker.command("echo")
def echo(args, ctx):
    global received
    received += 1
    return {"echoed": args, "pid": os.getpid(), "received": received}


if __name__ == "__main__":
    worker.run()
