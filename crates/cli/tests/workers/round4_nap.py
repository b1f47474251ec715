"""A worker whose `nap` writes its pid to the file `pids` names, then
sleeps `s` seconds (outside_cli_round4.rs)."""

import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("nap")
def nap(args):
    with open(args["pids"], "w") as f:
        f.write("%d\n" % os.getpid())
    time.sleep(float(args.get("s", 60)))
    return {"ok": True}


worker.run()
