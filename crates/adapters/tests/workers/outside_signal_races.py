"""For outside_signal_races.rs: a Python worker with plain functions (the
sync serve loop: SIGINT cancels the running handler).

Every final reply the bridge writes is noted, once it is out, in
<tmp>/snakepit-osr-replies-<pid>.log as "<id> ok" or "<id> <error type>",
so that the test sees what the worker answered to calls whose callers had
already given up. Handlers note what they did in the file `log` names."""
import os
import tempfile
import time

import snakepit_bridge
from snakepit_bridge import _sync


def replies_file():
    # Named when written: a worker forked from a preload template has a
    # pid of its own.
    return os.path.join(tempfile.gettempdir(), f"snakepit-osr-replies-{os.getpid()}.log")


_send = _sync.SyncServer.send
_writer = None  # the pid that has written its first reply


def _noting_send(self, value):
    _send(self, value)
    if "success" in value:
        what = "ok" if value["success"] else value["error"]["type"]
        global _writer
        # A file left by an earlier process with the same pid is emptied
        # by this one's first reply.
        mode = "a" if _writer == os.getpid() else "w"
        _writer = os.getpid()
        with open(replies_file(), mode) as f:
            f.write(f"{value['id']} {what}\n")


_sync.SyncServer.send = _noting_send

w = snakepit_bridge.Worker()


def note(path, what):
    if path:
        with open(path, "a") as f:
            f.write(what + "\n")


@w.command("echo")
def echo(args, ctx):
    return {"token": args.get("token"), "pid": os.getpid(), "id": ctx.request_id}


@w.command("sleep")
def sleep(args, ctx):
    note(args.get("log"), f"start {args.get('token')}")
    time.sleep(args["ms"] / 1000)
    note(args.get("log"), f"end {args.get('token')}")
    return {"token": args.get("token"), "pid": os.getpid()}


@w.command("swallow")
def swallow(args, ctx):
    """Catches the KeyboardInterrupt of the pool's SIGINT and returns
    normally; then, if `after_ms`, goes on that long before returning."""
    note(args["log"], "start")
    try:
        time.sleep(args["ms"] / 1000)
    except KeyboardInterrupt:
        note(args["log"], "caught")
        time.sleep(args.get("after_ms", 0) / 1000)
        note(args["log"], "returned")
        return {"swallowed": True}
    note(args["log"], "end")
    return {"swallowed": False}


@w.command("convert")
def convert(args, ctx):
    """Turns the KeyboardInterrupt of the pool's SIGINT into another error."""
    try:
        time.sleep(args["ms"] / 1000)
    except KeyboardInterrupt:
        note(args["log"], "caught")
        raise RuntimeError("aborted")
    return {}


@w.command("swallow_emit")
def swallow_emit(args, ctx):
    """Sends one chunk, then waits; once cancelled, tries another chunk and
    notes what emit returned, then returns normally."""
    ctx.emit("first")
    try:
        time.sleep(args["ms"] / 1000)
    except KeyboardInterrupt:
        note(args["log"], f"cancelled {ctx.cancelled}")
        note(args["log"], f"emit {ctx.emit('late')}")
        return {"swallowed": True}
    return {"swallowed": False}


@w.command("chunks")
def chunks(args, ctx):
    """Sends `n` chunks {"i": i, "pad": pad}, `ms` apart."""
    pad = "p" * args.get("pad", 0)
    try:
        for i in range(args["n"]):
            ctx.send_chunk({"i": i, "pad": pad})
            if args.get("ms"):
                time.sleep(args["ms"] / 1000)
        note(args.get("log"), "end")
        return {"sent": args["n"], "token": args.get("token")}
    finally:
        note(args.get("log"), "finally")


@w.command("host")
def host(args, ctx):
    """Calls host function `function` with `args`, then, if `then_set`,
    session.set of that key; notes each step."""
    try:
        note(args["log"], "asking")
        value = ctx.call_host(args["function"], args.get("with", {}))
        note(args["log"], f"answered {value}")
        if "then_set" in args:
            ctx.session.set(args["then_set"], args.get("value"))
            note(args["log"], "set")
        return {"value": value, "pid": os.getpid()}
    finally:
        note(args["log"], "finally")


@w.command("host_cleanup")
def host_cleanup(args, ctx):
    """Waits for host function `slow`; its clean-up takes `cleanup_ms`."""
    try:
        ctx.call_host("slow", args["with"])
        note(args["log"], "answered")
    finally:
        time.sleep(args["cleanup_ms"] / 1000)
        note(args["log"], "cleaned")


@w.command("big")
def big(args, ctx):
    return {"token": args["token"], "data": "b" * args["size"]}


w.run()
