"""A bridge worker for outside_give_up_races.rs.

Every handler notes what it did in the file its `log` argument names, one
line each, appended with O_APPEND: "start <token> <unix time>" as it
begins, then "end <token>" or "interrupted <token>" (SIGINT cut it short).
A test so sees which calls ran, in what order, when, and how they ended.
"""
import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


def note(args, what):
    path = args.get("log")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (what + "\n").encode())
    finally:
        os.close(fd)


@worker.command("nap")
def nap(args, ctx):
    """Sleeps `ms` (0 by default); the reply carries `big` bytes of
    padding."""
    token = args.get("token", "")
    note(args, "start %s %.6f" % (token, time.time()))
    try:
        time.sleep(args.get("ms", 0) / 1000.0)
    except KeyboardInterrupt:
        note(args, "interrupted " + token)
        raise
    note(args, "end " + token)
    # `big`: bytes of padding in the reply (a reply the pool takes a while
    # to read).
    return {"token": token, "pid": os.getpid(), "id": ctx.request_id,
            "pad": "x" * args.get("big", 0)}


@worker.command("stream")
def stream(args, ctx):
    """Emits `n` chunks (forever without `n`), `ms` apart."""
    token = args.get("token", "")
    note(args, "start %s %.6f" % (token, time.time()))
    n = args.get("n")
    i = 0
    try:
        while n is None or i < n:
            ctx.emit({"i": i, "token": token})
            i += 1
            if args.get("ms"):
                time.sleep(args["ms"] / 1000.0)
    except KeyboardInterrupt:
        note(args, "interrupted " + token)
        raise
    note(args, "end " + token)
    return {"token": token, "pid": os.getpid(), "chunks": i}


if __name__ == "__main__":
    worker.run()
