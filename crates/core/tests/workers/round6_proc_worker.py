"""A bridge worker for crates/core/tests/outside_round6_processes.rs.

It works preloaded (forked from a template) or started directly.

- `leave_group`: moves this worker out of the process group the pool put
  it in, into a group nobody listed: it forks a helper, makes the helper
  lead a new group, joins that group, then kills and reaps the helper, so
  the worker is left alone in a group whose id is not its pid.
- `hang`: ignores SIGTERM and SIGINT, writes the file `args["marker"]`,
  then sleeps for ever (a handler that never returns, so the end of its
  stdin is never read).
- `pid`: its pid and process group.
"""
import os
import signal
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("pid")
def pid(args, ctx):
    return {"pid": os.getpid(), "pgid": os.getpgid(0)}


@worker.command("leave_group")
def leave_group(args, ctx):
    helper = os.fork()
    if helper == 0:
        try:
            while True:
                time.sleep(60)
        finally:
            os._exit(0)
    os.setpgid(helper, helper)
    os.setpgid(0, helper)
    os.kill(helper, signal.SIGKILL)
    os.waitpid(helper, 0)
    return {"pid": os.getpid(), "pgid": os.getpgid(0)}


@worker.command("hang")
def hang(args, ctx):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(args["marker"], "w"):
        pass
    while True:
        time.sleep(60)


worker.run()
