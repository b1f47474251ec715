"""A worker for test_host_threads_hostile.py: handlers whose threads call
the host in awkward moments. HOST_THREADS_MODE=sync (one call at a time,
the default) or concurrent (max_concurrency=4).

The test's fake pool answers every host call with ``{"echo": args}``.
Each thread's outcome is kept by tag; ``report`` returns them once every
thread has ended."""

import os
import threading
import time

import snakepit_bridge
from snakepit_bridge import generic

MODE = os.environ.get("HOST_THREADS_MODE", "sync")
worker = snakepit_bridge.Worker(max_concurrency=4 if MODE == "concurrent" else None)
generic.register(worker)

_lock = threading.Lock()
_outcomes = {}  # tag -> what its host call got
_threads = []  # every thread started, joined by "report"
_gates = {}  # tag -> Event
_order = []  # ids of the "mark" calls, in the order they ran


def _attempt(ctx, args):
    try:
        return {"result": ctx.call_host("echo", args)}
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc)}


def _gate(tag):
    with _lock:
        return _gates.setdefault(tag, threading.Event())


def _start(target, name=None):
    t = threading.Thread(target=target, daemon=True, name=name)
    t.start()
    _threads.append(t)  # no lock: see _flag
    return t


def _flag():
    """A one-way flag without a lock: (set, wait for it, up to 2 s). A
    KeyboardInterrupt (the SIGINT tests) that lands inside a lock's
    ``with`` can leave the lock held, and a thread waiting on it stuck."""
    box = []

    def wait():
        deadline = time.monotonic() + 2
        while not box and time.monotonic() < deadline:
            time.sleep(0.0002)

    return (lambda: box.append(True)), wait


@worker.command("swarm")
def swarm(args, ctx):
    """``n`` threads, each calling the host ``k`` times in a row, the
    handler's own thread too; returns what every call got."""
    n, k = args["n"], args["k"]
    results = [[None] * k for _ in range(n + 1)]

    def one(i):
        for j in range(k):
            results[i][j] = _attempt(ctx, {"i": i, "j": j, "rid": ctx.request_id})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    one(n)
    for t in threads:
        t.join()
    return results


@worker.command("race_return")
def race_return(args, ctx):
    """A thread that calls the host the moment the handler returns."""
    tag = args["tag"]
    go, wait = _flag()

    def call():
        wait()
        _outcomes[tag] = _attempt(ctx, {"tag": tag})

    try:
        _start(call, tag)
    finally:
        go()  # even when a SIGINT cut the handler short
    # A different moment each time: at once, after letting the thread run,
    # or after some work of our own (the thread may get the GIL meanwhile).
    spin = int(tag) % 4
    if spin == 1:
        time.sleep(0)
    elif spin == 2:
        sum(range(2000))
    elif spin == 3:
        time.sleep(0.0005)
    return tag


@worker.command("hold_then_return")
def hold_then_return(args, ctx):
    """A thread whose host call is sent (or about to be) when the handler
    returns; the test's pool holds it unanswered."""
    tag = args["tag"]
    started, wait = _flag()

    def call():
        started()
        _outcomes[tag] = _attempt(ctx, {"tag": tag})

    _start(call, tag)
    wait()
    return tag


@worker.command("leave_for_next")
def leave_for_next(args, ctx):
    """A thread that calls the host only once ``gate`` (tag) opens: the
    next call opens it."""
    tag = args["tag"]
    gate = _gate(tag)

    def call():
        gate.wait()
        _outcomes[tag] = _attempt(ctx, {"tag": tag})
        _gate(tag + "/done").set()

    _start(call, tag)
    return tag


@worker.command("open_and_call")
def open_and_call(args, ctx):
    """Opens the gate of a thread left by an earlier call, calls the host
    from here and from a thread of its own while that thread tries, and
    returns what both got (after the stale thread's call has ended)."""
    tag = args["tag"]
    _gate(tag).set()
    mine = {}

    def fresh():
        mine["thread"] = _attempt(ctx, {"fresh": ctx.request_id})

    t = threading.Thread(target=fresh)
    t.start()
    mine["here"] = _attempt(ctx, {"here": ctx.request_id})
    t.join()
    _gate(tag + "/done").wait(30)
    return mine


@worker.command("ask_and_block")
def ask_and_block(args, ctx):
    """A thread calls the host while the handler's own thread blocks
    (``how``: join, event or sleep) without reading stdin."""
    tag = args["tag"]

    def call():
        # A head start for the handler's own thread: a SIGINT that lands
        # just before it blocks waits (CPython) until the wait ends.
        time.sleep(args.get("delay", 0))
        _outcomes[tag] = _attempt(ctx, {"tag": tag})

    t = _start(call, tag)
    how = args["how"]
    if how == "join":
        t.join()
    elif how == "event":
        threading.Event().wait(60)
    else:
        time.sleep(60)
    return {"joined": _outcomes.get(tag)}


@worker.command("mark")
def mark(args, ctx):
    _order.append(ctx.request_id)
    return ctx.request_id


@worker.command("order")
def order(args):
    return list(_order)


@worker.command("report")
def report(args):
    threads = list(_threads)
    deadline = time.monotonic() + args.get("wait", 20)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        import faulthandler
        import sys

        faulthandler.dump_traceback(sys.stderr)
    return {"alive": alive, "outcomes": dict(_outcomes)}


if MODE == "concurrent":
    import asyncio

    _tasks = []

    @worker.command("aswarm")
    async def aswarm(args, ctx):
        """An async handler: ``n`` threads call the host (blocking) and
        ``n`` tasks with acall_host, ``k`` times each, all at once."""
        n, k = args["n"], args["k"]
        loop = asyncio.get_running_loop()

        def in_thread(i):
            return [_attempt(ctx, {"t": i, "j": j}) for j in range(k)]

        async def in_task(i):
            got = []
            for j in range(k):
                try:
                    got.append({"result": await ctx.acall_host("echo", {"a": i, "j": j})})
                except Exception as exc:
                    got.append({"type": type(exc).__name__, "message": str(exc)})
            return got

        threads = [loop.run_in_executor(None, in_thread, i) for i in range(n)]
        tasks = [in_task(i) for i in range(n)]
        return {"threads": await asyncio.gather(*threads), "tasks": await asyncio.gather(*tasks)}

    @worker.command("arace_return")
    async def arace_return(args, ctx):
        """An async handler that leaves a task calling acall_host, and a
        thread calling call_host, as it returns."""
        tag = args["tag"]

        async def later():
            if int(tag) % 2:
                await asyncio.sleep(0)
            try:
                value = {"result": await ctx.acall_host("echo", {"tag": tag})}
            except BaseException as exc:
                value = {"type": type(exc).__name__, "message": str(exc)}
            _outcomes[tag] = value

        def thread():
            _outcomes[tag + "/t"] = _attempt(ctx, {"tag": tag + "/t"})

        _tasks.append(asyncio.get_running_loop().create_task(later()))
        _start(thread, tag + "/t")
        return tag

    @worker.command("atasks_done")
    async def atasks_done(args):
        await asyncio.gather(*_tasks)
        return len(_tasks)


if __name__ == "__main__":
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # stacks on demand, when a test stalls
    worker.run()
