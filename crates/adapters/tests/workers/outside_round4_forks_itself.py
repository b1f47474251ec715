"""A preloaded worker whose module-level code forks, as a careless script
or library might: `R4_FORK=both` forks and lets both processes go on into
`worker.run()` (two templates on the pool's one socket); `R4_FORK=daemon`
ends the process the pool started and lets its child go on (a daemonizing
library). Only in the template (`SNAKEPIT_PRELOAD=1`); a worker started
directly or forked from the template does not fork here."""

import os

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command
def whoami(args):
    return {"pid": os.getpid(), "ppid": os.getppid()}


MODE = os.environ.get("R4_FORK", "")
if os.environ.get("SNAKEPIT_PRELOAD") == "1":
    if MODE == "both":
        os.fork()
    elif MODE == "daemon":
        if os.fork():
            os._exit(0)

worker.run()
