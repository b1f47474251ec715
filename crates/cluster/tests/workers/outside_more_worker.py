"""A worker for crates/cluster/tests/outside_cluster_more.rs.

- At start, when the file named by OUTSIDE_BROKEN exists, it cannot load
  its "model": it says so on stderr and exits 7 before its hello (a start
  failure with a stderr tail).
- `hold` waits until the file `gate` exists; with `marker`, it then creates
  that file (so every later start of this worker fails), says so on stderr
  and dies (exit 3) in the middle of the call.
- `nap` sleeps `ms`; `echo` answers with its pid, `token` and `prepared` (not `ping`:
  that name is the bridge's health check).
"""
import os
import sys
import time

broken = os.environ.get("OUTSIDE_BROKEN")
if broken and os.path.exists(broken):
    sys.stderr.write("outside_more_worker: cannot load the model: %s is there\n" % broken)
    sys.stderr.write("outside_more_worker: giving up (exit 7)\n")
    sys.stderr.flush()
    sys.exit(7)

import snakepit_bridge  # noqa: E402

worker = snakepit_bridge.Worker()


@worker.command("echo")
def echo(args, ctx):
    return {"pid": os.getpid(), "token": args.get("token"), "prepared": args.get("prepared")}


@worker.command("nap")
def nap(args, ctx):
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"pid": os.getpid(), "slept_ms": args.get("ms", 0)}


@worker.command("hold")
def hold(args, ctx):
    gate = args["gate"]
    until = time.time() + 60
    while not os.path.exists(gate) and time.time() < until:
        time.sleep(0.01)
    marker = args.get("marker")
    if marker:
        with open(marker, "w") as f:
            f.write("broken")
        sys.stderr.write("outside_more_worker: breaking on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    return {"pid": os.getpid()}


worker.run()
