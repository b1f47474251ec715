"""A worker that shows its command line (crates/core/tests/run_id_arg.rs).

`argv` answers `sys.argv`, the pid and the parent's pid. It takes any arguments after the
script's path and ignores them.
"""
import os
import sys

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("argv")
def argv(args, ctx):
    return {"argv": sys.argv, "pid": os.getpid(), "ppid": os.getppid()}


worker.run()
