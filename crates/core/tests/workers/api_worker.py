"""A worker for api_promises.rs, built on the Python bridge.

`env` reports the variables it is asked about; `hold` keeps its worker busy
until the test creates a release file, so tests wait on conditions, not on
time; `started` marks are written so a test knows a call is running.
"""
import os
import sys
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()
served = 0


@worker.command("env")
def env(args, ctx):
    return {
        "vars": {k: os.environ.get(k) for k in args.get("keys", [])},
        "worker_id": ctx.worker_id,
        "pid": os.getpid(),
    }


@worker.command("echo")
def echo(args, ctx):
    global served
    served += 1
    return {"echoed": args, "pid": os.getpid(), "served": served}


@worker.command("hold")
def hold(args, ctx):
    """Runs until the file `release` exists (at most `max_s` seconds)."""
    if args.get("started"):
        with open(args["started"], "w") as f:
            f.write(str(os.getpid()))
    deadline = time.monotonic() + args.get("max_s", 30)
    while not os.path.exists(args["release"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"pid": os.getpid(), "token": args.get("token")}


@worker.command("stream")
def stream(args, ctx):
    for i in range(args.get("n", 3)):
        ctx.emit({"i": i})
    return {"done": args.get("n", 3)}


@worker.command("die_noisily")
def die_noisily(args, ctx):
    """Writes `lines` numbered lines to stderr, then exits with `code`."""
    for i in range(args.get("lines", 100)):
        sys.stderr.write("noise line %d\n" % i)
    sys.stderr.flush()
    os._exit(args.get("code", 3))


if __name__ == "__main__":
    worker.run()
