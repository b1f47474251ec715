# Worker for crates/cluster/tests/outside_client_races.rs. Every command
# logs `<token> start|end|interrupted <pid>` to `log`, if that file
# exists (one short O_APPEND line each, never interleaved), so a test can
# tell what ran, and whether it ran to its end or was cancelled (SIGINT:
# KeyboardInterrupt).
#
# - `stream`: emits {"i": 0} .. {"i": n-1} (sleeping `pace_ms` after
#   each), then returns {"n": n};
# - `run`: writes `marker` once started, sleeps `ms`, returns
#   {"token": token, "pid": pid}.

import os
import time
import snakepit_bridge

worker = snakepit_bridge.Worker()


def log(args, what):
    # Only to a log the test made (and has not removed yet).
    if args.get("log") and os.path.exists(args["log"]):
        with open(args["log"], "a") as f:
            f.write("%s %s %d\n" % (args.get("token"), what, os.getpid()))


@worker.command("stream")
def stream(args, ctx):
    log(args, "start")
    try:
        n = args.get("n", 3)
        pace = args.get("pace_ms", 0) / 1000.0
        for i in range(n):
            ctx.emit({"i": i})
            if pace:
                time.sleep(pace)
    except KeyboardInterrupt:
        log(args, "interrupted")
        raise
    log(args, "end")
    return {"n": n}


@worker.command("run")
def run(args, ctx):
    log(args, "start")
    try:
        if args.get("marker"):
            with open(args["marker"], "w") as f:
                f.write("started")
        time.sleep(args.get("ms", 0) / 1000.0)
    except KeyboardInterrupt:
        log(args, "interrupted")
        raise
    log(args, "end")
    return {"token": args.get("token"), "pid": os.getpid()}


worker.run()
