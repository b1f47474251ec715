# A worker whose one command, `run`, appends `token` and its pid to `log`
# (one short `O_APPEND` line per run, never interleaved), writes `marker`
# once it has started, waits for the file `gate` to exist, then sleeps
# `ms`; it returns its token and pid.

import os
import time
import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("run")
def run(args, ctx):
    if args.get("log"):
        with open(args["log"], "a") as f:
            f.write("%s %d\n" % (args.get("token"), os.getpid()))
    if args.get("marker"):
        with open(args["marker"], "w") as f:
            f.write("started")
    gate = args.get("gate")
    if gate:
        while not os.path.exists(gate):
            time.sleep(0.005)
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"token": args.get("token"), "pid": os.getpid()}


worker.run()
