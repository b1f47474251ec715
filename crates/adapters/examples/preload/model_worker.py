"""A worker whose "model" takes a while to load and some memory to hold:
loaded once in the preload template, shared by every worker forked from it."""

import array
import os
import random
import time

from snakepit_bridge import Worker

started = time.monotonic()
# Stands in for model weights: 16 MiB of floats, read by every worker.
WEIGHTS = array.array("d", (i / 7 for i in range(2 * 1024 * 1024)))
LOADED_IN = os.getpid()
LOAD_MS = round((time.monotonic() - started) * 1000)

worker = Worker()
connection = {}


@worker.after_fork
def per_process():
    # What every worker needs of its own: a connection, a fresh seed.
    random.seed()
    connection["opened_by"] = os.getpid()


@worker.command
def predict(args):
    i = int(args.get("x", 0)) % len(WEIGHTS)
    return {
        "y": WEIGHTS[i],
        "pid": os.getpid(),
        "loaded_in": LOADED_IN,
        "load_ms": LOAD_MS,
        "connection_of": connection.get("opened_by"),
    }


worker.run()
