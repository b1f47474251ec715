"""A worker for crates/adapters/tests/outside_template_protocol.rs, which
starts it as a preload template itself (SNAKEPIT_PRELOAD=1, fd 0 one end of
a SOCK_SEQPACKET socket pair) and plays the pool.

From the template's environment (read at import):
- OUTSIDE_TEMPLATE_THREAD=1 starts a non-daemon thread that never ends;
- OUTSIDE_TEMPLATE_SPAWN=1 starts a short-lived helper process (`sleep 0.3`)
  and prints "outside_template: spawned <pid>" to stdout (the template's log).

From a fork request's environment (read in the forked worker):
- OUTSIDE_TEMPLATE_EXIT=N: the first after-fork hook exits at once with
  status N.

The first after-fork hook records what it saw (its process, the worker id,
OUTSIDE_TEMPLATE_VAR, SNAKEPIT_PRELOAD) and writes
"outside_template: hook ran" to stderr; `state` returns that record and the
named variables of the environment as they are when it is called.
"""

import atexit
import os
import subprocess
import sys
import threading
import time

import snakepit_bridge

if os.environ.get("OUTSIDE_TEMPLATE_THREAD") == "1":
    threading.Thread(target=threading.Event().wait, name="outside-template-thread").start()

# Registered at load, so in the template: it must never run there.
atexit.register(lambda: print(f"outside_template: at_exit ran in {os.getpid()}", flush=True))

if os.environ.get("OUTSIDE_TEMPLATE_SPAWN") == "1":
    HELPER = subprocess.Popen(["sleep", "0.3"])
    print(f"outside_template: spawned {HELPER.pid}", flush=True)

    def _wait_for_helper():
        # The script waits for its helper itself, once it has surely ended
        # (the template must have left it to the script).
        time.sleep(1)
        try:
            _, status = os.waitpid(HELPER.pid, 0)
            print(f"outside_template: the script reaped its helper, status {os.WEXITSTATUS(status)}",
                  flush=True)
        except ChildProcessError:
            print("outside_template: the script's helper was reaped by someone else", flush=True)

    threading.Thread(target=_wait_for_helper, name="outside-template-waiter", daemon=True).start()

worker = snakepit_bridge.Worker()
SEEN = {}


@worker.after_fork
def first(w):
    code = os.environ.get("OUTSIDE_TEMPLATE_EXIT")
    if code is not None:
        os._exit(int(code))
    SEEN.update({
        "pid": os.getpid(),
        "worker_pid": w.pid,
        "worker_id": w.worker_id,
        "var": os.environ.get("OUTSIDE_TEMPLATE_VAR"),
        "preload": os.environ.get("SNAKEPIT_PRELOAD"),
    })
    sys.stderr.write("outside_template: hook ran\n")
    sys.stderr.flush()


@worker.command
def state(args):
    return {
        "pid": os.getpid(),
        "hook": SEEN,
        "env": {name: os.environ.get(name) for name in args.get("names", [])},
    }


worker.run()
