"""A bridge worker for tests of what a handler is told: whether SIGINT
reached it, and a handler that reports its call cancelled itself.
"""
import os
import sys
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("echo")
def echo(args, ctx):
    return {"echoed": args, "pid": os.getpid()}


@worker.command("nap")
def nap(args, ctx):
    """Sleeps `ms`, then writes `finished` to `record`; writes `interrupted`
    there instead if SIGINT cuts the sleep short."""
    try:
        time.sleep(args["ms"] / 1000.0)
    except KeyboardInterrupt:
        with open(args["record"], "w") as f:
            f.write("interrupted")
        raise
    with open(args["record"], "w") as f:
        f.write("finished")
    return {"pid": os.getpid()}


@worker.command("give_up")
def give_up(args, ctx):
    """The handler reports its call cancelled itself."""
    raise snakepit_bridge.Cancelled("the handler gave up")


if __name__ == "__main__":
    worker.run()
