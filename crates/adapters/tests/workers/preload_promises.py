"""A worker for crates/adapters/tests/preload_promises.rs: what survives a
fork, as docs/preload.md says. Switches, from the environment:

- PRELOAD_EXIT_LOG: a file; the template registers an atexit handler at
  import, the after-fork hook another; each appends its tag ("template",
  "worker") and the pid of the process that runs it.
- PRELOAD_HOOK_RAISES: the after-fork hook raises.
- PRELOAD_SLEEP_MS: the module-level code sleeps this long (a slow load).
"""

import atexit
import gc
import os
import random
import time

from snakepit_bridge import Worker

LOG = os.environ.get("PRELOAD_EXIT_LOG")


def _ran(tag):
    with open(LOG, "a") as f:
        f.write("%s %d\n" % (tag, os.getpid()))


if LOG:
    atexit.register(_ran, "template")
if os.environ.get("PRELOAD_SLEEP_MS"):
    time.sleep(int(os.environ["PRELOAD_SLEEP_MS"]) / 1000)

worker = Worker()


@worker.after_fork
def per_process():
    if os.environ.get("PRELOAD_HOOK_RAISES"):
        raise RuntimeError("cannot reach the feature store")
    if LOG:
        atexit.register(_ran, "worker")


@worker.command
def draw(args):
    time.sleep(args.get("ms", 0) / 1000)
    return {"pid": os.getpid(), "random": random.random(), "frozen": gc.get_freeze_count()}


worker.run()
