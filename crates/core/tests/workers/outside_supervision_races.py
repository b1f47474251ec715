"""A bridge worker for crates/core/tests/outside_supervision_races.rs.

argv[1] is a directory of switches:
- `hang`: holds a pid; that worker's health pings (not its init handshake)
  hang for 60 s.
- `slow`: while it exists, a worker sleeps 1.5 s before it starts serving
  (so a recycle's replacement is in its start for that long).
Commands: `pid`.
"""
import os
import sys
import time

import snakepit_bridge

switches = sys.argv[1]
worker = snakepit_bridge.Worker()


def switch(name):
    try:
        with open(os.path.join(switches, name)) as f:
            return f.read().strip()
    except OSError:
        return None


@worker.command("ping")
def ping(args, ctx):
    if args.get("health_check") and switch("hang") == str(os.getpid()):
        time.sleep(60)
    return {"status": "ok", "pid": os.getpid()}


@worker.command("pid")
def pid(args, ctx):
    return {"pid": os.getpid()}


if switch("slow") is not None:
    time.sleep(1.5)

if __name__ == "__main__":
    worker.run()
