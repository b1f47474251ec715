"""A worker for outside_runtimes.rs, built on the Python bridge.

`stubborn` runs for `ms` milliseconds whatever it is told: a cancel's
SIGINT (KeyboardInterrupt) is swallowed, so only a kill ends it early.
"""
import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("stubborn")
def stubborn(args, ctx):
    end = time.monotonic() + args.get("ms", 0) / 1000.0
    while time.monotonic() < end:
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            pass
    return {"pid": os.getpid()}


@worker.command("pid")
def pid(args, ctx):
    return {"pid": os.getpid()}


worker.run()
