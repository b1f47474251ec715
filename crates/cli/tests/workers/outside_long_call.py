"""A bridge worker for outside_long_running.rs: `nap` writes its pid to
`pidfile` (when given), then sleeps `ms` milliseconds, so that a test can
stop the command while the call runs and check the worker is gone."""
import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("nap")
def nap(args, ctx):
    if args.get("pidfile"):
        with open(args["pidfile"], "w") as f:
            f.write(str(os.getpid()))
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"slept": True, "pid": os.getpid()}


worker.run()
