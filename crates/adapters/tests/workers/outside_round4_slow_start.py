"""A preloaded worker that never finishes starting, for killing its host
meanwhile. `R4_HANG=load`: the template starts a helper process, then
loads for 300 s. `R4_HANG=hook`: each forked worker's after-fork hook
starts a helper and hangs for 300 s. Either way the pids (the template's
or the worker's, then the helper's) are written to `$R4_PIDS` first."""

import os
import subprocess
import time

import snakepit_bridge

OUT = os.environ["R4_PIDS"]
HANG = os.environ.get("R4_HANG", "")


def note_and_hang():
    helper = subprocess.Popen(["sleep", "300"])
    with open(OUT + ".tmp", "w") as f:
        f.write("%d %d %d\n" % (os.getpid(), helper.pid, os.getppid()))
    os.rename(OUT + ".tmp", OUT)
    time.sleep(300)


if HANG == "load" and os.environ.get("SNAKEPIT_PRELOAD") == "1":
    note_and_hang()

worker = snakepit_bridge.Worker()

if HANG == "hook":
    worker.after_fork(note_and_hang)

worker.run()
