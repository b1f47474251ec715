"""A bridge worker for the tests of a pool's `max_frame_size`: a reply as
large as asked, and a count of the calls this process received (so a test
can tell that a refused request never reached it).

With FRAME_LIMITS_IGNORE_LIMIT=1 it forgets the limit the pool gave it
(`SNAKEPIT_MAX_FRAME_SIZE`) before the bridge reads it, so it writes a
reply above the limit as a worker that is not a bundled bridge would.
"""
import os

if os.environ.get("FRAME_LIMITS_IGNORE_LIMIT") == "1":
    os.environ.pop("SNAKEPIT_MAX_FRAME_SIZE", None)

import snakepit_bridge  # noqa: E402  (after the environment is set)

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
