"""A worker for crates/cluster/tests/outside_round7.rs.

- `raise_big`: raises ValueError whose message is `bytes` bytes long,
  from "round7-start" to "round7-end".
- `crash_loud`: writes 40 lines of about 1,900 bytes to stderr, then a
  last short line, and dies at once (exit 3) in the middle of the call.
- `echo`: answers with its pid and its args.
"""
import os
import sys

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("raise_big")
def raise_big(args, ctx):
    n = int(args.get("bytes", 200000))
    raise ValueError("round7-start " + "x" * n + " round7-end")


@worker.command("crash_loud")
def crash_loud(args, ctx):
    for i in range(40):
        sys.stderr.write("round7 line %d %s\n" % (i, "y" * 1900))
    sys.stderr.write("round7_worker: the last line\n")
    sys.stderr.flush()
    os._exit(3)


@worker.command("echo")
def echo(args, ctx):
    return {"pid": os.getpid(), "args": args}


worker.run()
