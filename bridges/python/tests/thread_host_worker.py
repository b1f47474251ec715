"""A worker whose handlers call the host from threads (and tasks) they
start. HOST_THREADS_MODE=sync (one call at a time, the default) or
concurrent (max_concurrency=4, with an async handler too).

Its host function is whatever the test's fake pool answers; ``outcome``
reports what the host calls of threads left behind got."""

import asyncio
import os
import threading
import time

import snakepit_bridge
from snakepit_bridge import generic

MODE = os.environ.get("HOST_THREADS_MODE", "sync")
worker = snakepit_bridge.Worker(max_concurrency=4 if MODE == "concurrent" else None)
generic.register(worker)

# What each left-behind thread's host call ended with, by tag.
_outcomes = {}
_finished = {}
_go = {}
_lock = threading.Lock()


def _attempt(ctx, args):
    try:
        value = {"result": ctx.call_host("echo", args)}
    except Exception as exc:  # reported (a KeyboardInterrupt ends the call)
        value = {"type": type(exc).__name__, "message": str(exc)}
    return value


def _slot(tag):
    with _lock:
        if tag not in _finished:
            _finished[tag] = threading.Event()
            _go[tag] = threading.Event()
        return _finished[tag], _go[tag]


@worker.command("fan_out")
def fan_out(args, ctx):
    """``n`` threads call the host at once, the handler's own thread too
    when ``here``; returns what each got, in thread order."""
    n = args.get("n", 3)
    results = [None] * n

    def one(i):
        results[i] = _attempt(ctx, {"i": i})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    here = _attempt(ctx, {"i": "here"}) if args.get("here") else None
    for t in threads:
        t.join()
    return {"threads": results, "here": here}


@worker.command("sleep_while_asking")
def sleep_while_asking(args, ctx):
    """A thread waits for the host (and reports what it got) while the
    handler's own thread sleeps."""
    tag = args["tag"]
    finished, _ = _slot(tag)

    def ask():
        _outcomes[tag] = _attempt(ctx, {"i": "thread"})
        finished.set()

    threading.Thread(target=ask, daemon=True).start()
    time.sleep(args.get("seconds", 30))
    return "not interrupted"


@worker.command("leave")
def leave(args, ctx):
    """Starts a thread that calls the host once ``go`` (tag) says so, and
    returns at once; with ``now`` the thread calls at once instead."""
    tag = args["tag"]
    finished, go = _slot(tag)
    if args.get("now"):
        go.set()

    def later():
        go.wait()
        _outcomes[tag] = _attempt(ctx, {"tag": tag})
        finished.set()

    threading.Thread(target=later, daemon=True).start()
    return "left"


@worker.command("leave_waiting")
def leave_waiting(args, ctx):
    """Starts a thread whose host call is on its way or waiting when the
    handler returns (the test's pool answers only after the reply)."""
    tag = args["tag"]
    finished, _ = _slot(tag)
    started = threading.Event()

    def now():
        started.set()
        _outcomes[tag] = _attempt(ctx, {"tag": tag})
        finished.set()

    threading.Thread(target=now, daemon=True).start()
    started.wait()
    return "left"


@worker.command("go")
def go(args):
    _slot(args["tag"])[1].set()
    return "going"


@worker.command("outcome")
def outcome(args):
    finished, _ = _slot(args["tag"])
    if not finished.wait(10):
        return {"type": "Timeout", "message": "the thread's host call did not end"}
    return _outcomes[args["tag"]]


if MODE == "concurrent":

    @worker.command("aleave")
    async def aleave(args, ctx):
        """An async handler that leaves a task behind; the task calls the
        host once ``go`` (tag) says so."""
        tag = args["tag"]
        finished, go = _slot(tag)

        async def later():
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            try:
                value = {"result": await ctx.acall_host("echo", {"tag": tag})}
            except BaseException as exc:
                value = {"type": type(exc).__name__, "message": str(exc)}
            _outcomes[tag] = value
            finished.set()

        _tasks.append(asyncio.get_running_loop().create_task(later()))
        return "left"

    _tasks = []


if __name__ == "__main__":
    worker.run()
