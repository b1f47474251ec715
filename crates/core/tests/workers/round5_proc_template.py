"""A preload script for crates/core/tests/outside_round5_processes.rs.

As a template (SNAKEPIT_PRELOAD=1) it starts a helper child, puts the
helper in a process group of its own and moves itself into that group (so
the group it was started in, led by its own pid, is empty), writes
"<its pid> <helper pid>" to $R5_PID_FILE; then, with R5_TEMPLATE_MODE=hang,
never reaches `run()`, and otherwise serves as a template. Started
directly, or forked, it is an ordinary bridge worker.
"""
import os
import time

if os.environ.get("SNAKEPIT_PRELOAD") == "1":
    helper = os.fork()
    if helper == 0:
        os.closerange(0, 3)
        while True:
            time.sleep(60)
    os.setpgid(helper, helper)
    os.setpgid(0, helper)
    tmp = os.environ["R5_PID_FILE"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {helper}")
    os.rename(tmp, os.environ["R5_PID_FILE"])
    while os.environ.get("R5_TEMPLATE_MODE") == "hang":
        time.sleep(60)

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("pid")
def pid(args, ctx):
    return {"pid": os.getpid()}


worker.run()
