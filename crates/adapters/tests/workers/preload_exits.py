"""A worker for crates/adapters/tests/preload_exits.rs: threads and exits of
preloaded Python workers, as docs/preload.md says. It appends a line
"<tag> <pid>" to $PRELOAD_EXITS_LOG for each thing that happens:
"hook" when the after-fork hook runs, "worker-atexit" and
"template-atexit" when the exit handlers registered by the hook and at
import run. Switches, from the environment:

- PRELOAD_EXITS_TEMPLATE_THREAD: the module-level code (the template)
  starts a non-daemon thread named "template-loader" that never ends.
- PRELOAD_EXITS_WORKER_THREAD: the after-fork hook (each worker) starts a
  non-daemon thread named "worker-poller" that never ends.
"""

import atexit
import os
import threading
import time

from snakepit_bridge import Worker

LOG = os.environ["PRELOAD_EXITS_LOG"]


def _note(tag):
    with open(LOG, "a") as f:
        f.write("%s %d\n" % (tag, os.getpid()))


atexit.register(_note, "template-atexit")
if os.environ.get("PRELOAD_EXITS_TEMPLATE_THREAD"):
    threading.Thread(target=threading.Event().wait, name="template-loader", daemon=False).start()

worker = Worker()


@worker.after_fork
def per_process():
    _note("hook")
    atexit.register(_note, "worker-atexit")
    if os.environ.get("PRELOAD_EXITS_WORKER_THREAD"):
        threading.Thread(target=threading.Event().wait, name="worker-poller", daemon=False).start()


@worker.command
def threads(args):
    """The threads this process has: Python's view and the kernel's."""
    time.sleep(args.get("ms", 0) / 1000)
    return {
        "pid": os.getpid(),
        "names": sorted(t.name for t in threading.enumerate()),
        "non_daemon": sorted(t.name for t in threading.enumerate() if not t.daemon),
        "tasks": len(os.listdir("/proc/self/task")),
    }


worker.run()
