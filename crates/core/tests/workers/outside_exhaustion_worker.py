"""A worker for outside_exhaustion.rs, built on the Python bridge.

With OUTSIDE_FLOOD=1 in its environment, a thread of its own writes
numbered lines to stderr as fast as the pipe takes them, from before the
handshake until told to stop, while the worker serves calls.
"""
import os
import sys
import threading

import snakepit_bridge

worker = snakepit_bridge.Worker()
_stop = threading.Event()
_written = [0]


def _flood():
    n = 0
    while not _stop.is_set():
        batch = "".join("flood line %d\n" % i for i in range(n, n + 500))
        os.write(2, batch.encode())
        n += 500
        _written[0] = n


_thread = threading.Thread(target=_flood, daemon=True)
if os.environ.get("OUTSIDE_FLOOD") == "1":
    _thread.start()


def _stop_flood():
    _stop.set()
    if _thread.is_alive():
        _thread.join()


@worker.command("echo")
def echo(args, ctx):
    return {"echoed": args, "pid": os.getpid()}


@worker.command("wait_for")
def wait_for(args, ctx):
    """Returns once the file `path` exists (30 s at most)."""
    import time

    for _ in range(3000):
        if os.path.exists(args["path"]):
            break
        time.sleep(0.01)
    return {"pid": os.getpid()}


@worker.command("flooded")
def flooded(args, ctx):
    """How many lines the flood has written so far."""
    return {"lines": _written[0], "pid": os.getpid()}


@worker.command("finish")
def finish(args, ctx):
    """Stops the flood, writes `n` last lines, exits with `code`."""
    _stop_flood()
    for i in range(args.get("n", 10)):
        os.write(2, ("last line %d\n" % i).encode())
    os._exit(args.get("code", 5))


if __name__ == "__main__":
    worker.run()
