"""A worker for crates/adapters/tests/outside_template_faults.rs.

Knobs (environment):
- OTF_DIR: a directory; each after-fork hook appends its pid to
  OTF_DIR/hooks, and when OTF_DIR/mode exists its content picks what the
  hook does: "hang" (sleeps forever), "exit" (os._exit(7)), "raise";
- OTF_SPAWN: set, the module-level code (the template's, when preloaded)
  starts a `sleep 300` child (a helper process: a model server, a
  tokenizer daemon) and appends its pid to OTF_DIR/spawned.
"""

import os
import time

from snakepit_bridge import Worker

worker = Worker()
DIR = os.environ["OTF_DIR"]
HELPER = None
if os.environ.get("OTF_SPAWN"):
    import subprocess

    HELPER = subprocess.Popen(["sleep", "300"])
    with open(os.path.join(DIR, "spawned"), "a") as f:
        f.write(f"{HELPER.pid}\n")


@worker.after_fork
def per_process():
    with open(os.path.join(DIR, "hooks"), "a") as f:
        f.write(f"{os.getpid()}\n")
    try:
        with open(os.path.join(DIR, "mode")) as f:
            mode = f.read().strip()
    except FileNotFoundError:
        mode = ""
    if mode == "hang":
        while True:
            time.sleep(1)
    if mode == "exit":
        os._exit(7)
    if mode == "raise":
        raise RuntimeError("otf hook refuses")


@worker.command
def nap(args):
    with open(os.path.join(DIR, "napping"), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(args["s"])
    return {"pid": os.getpid()}


@worker.command
def whoami(args):
    return {"pid": os.getpid(), "ppid": os.getppid()}


worker.run()
