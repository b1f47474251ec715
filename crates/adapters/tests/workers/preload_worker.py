"""A worker for the preload tests: its module-level code appends its pid to
$PRELOAD_MARKER (once per template, so once per pool), an after-fork hook
records the process it ran in, and `whoami` tells the test all of it."""

import os
import subprocess
import threading
import time

from snakepit_bridge import Worker

LOADED_IN = os.getpid()
if os.environ.get("PRELOAD_MARKER"):
    with open(os.environ["PRELOAD_MARKER"], "a") as f:
        f.write(f"{LOADED_IN}\n")
if os.environ.get("PRELOAD_FAIL"):
    raise RuntimeError("model file missing: /models/absent.bin")
if os.environ.get("PRELOAD_THREAD"):
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()

worker = Worker()
hooked = {}


@worker.after_fork
def remember_the_process():
    hooked["pid"] = os.getpid()


@worker.command
def whoami(args):
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "loaded_in": LOADED_IN,
        "hook_pid": hooked.get("pid"),
        "worker_id": os.environ.get("SNAKEPIT_WORKER_ID"),
        "run_id": os.environ.get("SNAKEPIT_RUN_ID"),
        "preload": os.environ.get("SNAKEPIT_PRELOAD"),
        "echo": args,
    }


@worker.command
def spawn_child(args):
    child = subprocess.Popen(["sleep", "300"])
    return {"pid": os.getpid(), "child_pid": child.pid}


@worker.command
def sleep(args):
    if args.get("marker"):
        open(args["marker"], "w").close()
    time.sleep(args["ms"] / 1000)
    return whoami(args)


@worker.command
def crash(args):
    os._exit(3)


worker.run()
