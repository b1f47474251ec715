"""host_call_threads.rs: handlers that call the host from threads they
start. HCT_MODE=concurrent serves with max_concurrency=4 (asyncio mode),
else one call at a time."""

import os
import threading

import snakepit_bridge

worker = snakepit_bridge.Worker(max_concurrency=4 if os.environ.get("HCT_MODE") == "concurrent" else None)

_go = threading.Event()
_finished = threading.Event()
_outcome = {}


def _attempt(ctx, args):
    try:
        return {"result": ctx.call_host("echo", args)}
    except Exception as exc:  # reported: what the test checks
        return {"type": type(exc).__name__, "message": str(exc)}


@worker.command("fan_out")
def fan_out(args, ctx):
    n = args["n"]
    results = [None] * n

    def one(i):
        results[i] = _attempt(ctx, {"i": i})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    here = _attempt(ctx, {"i": "here"})
    for t in threads:
        t.join()
    return {"threads": results, "here": here, "pid": os.getpid()}


@worker.command("leave")
def leave(args, ctx):
    _go.clear()
    _finished.clear()

    def later():
        _go.wait()
        _outcome.update(_attempt(ctx, {"late": True}))
        _finished.set()

    threading.Thread(target=later, daemon=True).start()
    return os.getpid()


@worker.command("go")
def go(args):
    _go.set()
    return os.getpid()


@worker.command("outcome")
def outcome(args):
    if not _finished.wait(10):
        return {"type": "Timeout", "message": "the left-behind thread's host call did not end"}
    return dict(_outcome, pid=os.getpid())


if __name__ == "__main__":
    worker.run()
