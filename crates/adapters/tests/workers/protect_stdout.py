"""A worker for crates/adapters/tests/protect_stdout.rs. docs/bridges.md:
"Output *before* `run()`, for instance from a module that prints when
imported, still goes to the pool ...: call
`snakepit_bridge.protect_stdout()` first in such scripts."

This script does so, then writes to stdout at import three ways (print,
sys.stdout, a raw write to descriptor 1), then serves. With
PROTECT_STDOUT=0 it skips the call: what the docs warn against.
"""

import os
import sys
import time

import snakepit_bridge

if os.environ.get("PROTECT_STDOUT") != "0":
    snakepit_bridge.protect_stdout()

print("import-time print")
sys.stdout.write("import-time sys.stdout.write\n")
sys.stdout.flush()
os.write(1, b"import-time write to descriptor 1\n")

worker = snakepit_bridge.Worker()


@worker.command
def nap(args):
    """Holds the call `ms` milliseconds, writing to stdout meanwhile."""
    print("call-time print")
    os.write(1, b"call-time write to descriptor 1\n")
    time.sleep(args.get("ms", 0) / 1000)
    return {"pid": os.getpid()}


worker.run()
