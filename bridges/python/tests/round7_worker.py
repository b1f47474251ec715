"""A worker for test_outside_round7.py: the default (one call at a time)
mode, every handler a plain function.

``signal_idle_thread``: the handler starts a thread that only waits (it
never reads stdin), and sleeps (or, with ``join``, joins that thread); once it is about to sleep, another thread
sends ``signal`` to the waiting thread, not to the main one. The C-level
part of CPython's handler then runs off the main thread, and the main
thread's sleep is not interrupted: the state a signal that lands in the
instant before a blocking call begins leaves behind too, made certain.

``started``: calls the host once (so the test knows it runs), then sleeps.
"""

import functools
import os
import signal
import sys
import threading
import time

import snakepit_bridge
from snakepit_bridge import _sync

worker = snakepit_bridge.Worker()
snakepit_bridge.generic.register(worker)


class Alarm(Exception):
    """Raised by the script's own SIGUSR2 handler."""


def _on_sigusr2(signum, frame):
    raise Alarm("SIGUSR2 came")


signal.signal(signal.SIGUSR2, _on_sigusr2)


def note(text):
    sys.stderr.write(f"R7 {text}\n")
    sys.stderr.flush()


@worker.command("signal_idle_thread")
def signal_idle_thread(args, ctx):
    signum = getattr(signal, args["signal"])
    idle = threading.Event()
    idle_ident = []
    sleeping = []

    def wait():
        idle_ident.append(threading.get_ident())
        idle.wait(3600)

    def kick():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sleeping and idle_ident:
                note("kick")
                signal.pthread_kill(idle_ident[0], signum)
                return
            time.sleep(0.001)
        note("kick: never ready")

    idler = threading.Thread(target=wait, daemon=True)
    idler.start()
    threading.Thread(target=kick, daemon=True).start()
    try:
        sleeping.append(True)
        if args.get("join"):
            idler.join()  # the signalled thread itself, which waits an hour
        else:
            time.sleep(args.get("sleep", 3600))
    finally:
        idle.set()
        note(f"{ctx.request_id} finally ran")
    return "slept to the end"


@worker.command("started")
def started(args, ctx):
    ctx.call_host("started", {"id": ctx.request_id})
    try:
        time.sleep(args.get("sleep", 3600))
    finally:
        note(f"{ctx.request_id} finally ran")
    return "slept to the end"


@worker.command("nap")
def nap(args):
    # Several short sleeps: a stray second SIGINT (a cancel acted on twice)
    # would land in one of them.
    for _ in range(args.get("naps", 5)):
        time.sleep(args.get("each", 0.02))
    return "rested"


def logged(fn):
    """A user's decorator, as many are written: ``*args`` and functools.wraps."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        note(f"calling {fn.__name__}")
        return fn(*args, **kwargs)

    return wrapper


@worker.command("decorated_args")
@logged
def decorated_args(args):
    return {"args": args}


@worker.command("decorated_ctx")
@logged
def decorated_ctx(args, ctx):
    return {"args": args, "id": ctx.request_id}


@worker.command("watcher")
def watcher(args):
    """The bridge's signal-watching thread: its name, and whether the
    kernel may give it SIGINT or SIGTERM (its blocked mask, from /proc)."""
    threads = [t for t in threading.enumerate() if t.name == "snakepit-signals"]
    out = []
    for t in threads:
        with open(f"/proc/self/task/{t.native_id}/status") as f:
            blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
        out.append({
            "alive": t.is_alive(),
            "daemon": t.daemon,
            "blocks_sigint": bool(blocked >> (signal.SIGINT - 1) & 1),
            "blocks_sigterm": bool(blocked >> (signal.SIGTERM - 1) & 1),
        })
    # The main thread's own mask is left as it was.
    with open(f"/proc/self/task/{os.getpid()}/status") as f:
        main_blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    return {"watchers": out, "main_blocked": main_blocked, "nudge": _sync._NUDGE}


if __name__ == "__main__":
    code = worker.run()
    # Back in the script after the end of input: the watching thread has
    # ended with run(), and the nudge signal's handler is the one before.
    watchers = [t for t in threading.enumerate() if t.name == "snakepit-signals"]
    nudge = _sync._NUDGE
    restored = nudge is None or signal.getsignal(nudge) == signal.SIG_DFL
    note(f"after run: {code} watchers alive {len(watchers)} nudge restored {restored}")
