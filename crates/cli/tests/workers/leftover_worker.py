"""A bridge worker for the tests of what a crashed run leaves behind.

`escape` starts `sleep 300` in a session of its own (`setsid`): it leaves
the worker's process group, so neither the parent-death signal nor the
watchdog reaches it, and only the sweep can. It inherits the worker's
environment, and so the run id. Returns the child's pid.

`wait_for` answers once the file `path` exists (the test's go-ahead).

`talk` writes `chatter` to stderr (through `print`, which the bridge sends
there).
"""
import os
import subprocess
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("escape")
def escape(args, ctx):
    child = subprocess.Popen(["sleep", "300"], start_new_session=True, stdin=subprocess.DEVNULL)
    return {"pid": os.getpid(), "child_pid": child.pid}


@worker.command("wait_for")
def wait_for(args, ctx):
    while not os.path.exists(args["path"]):
        time.sleep(0.01)
    return {"pid": os.getpid()}


@worker.command("talk")
def talk(args, ctx):
    print("chatter")
    return {"pid": os.getpid()}


worker.run()
