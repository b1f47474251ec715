"""A worker for the pool's tests, built on the Python bridge.

Each command does one thing a test needs to observe: who served it (pid),
how long it took, how it failed, how it died.
"""
import os
import threading
import signal
import sys
import time

import snakepit_bridge

mode_async = "--async" in sys.argv
worker = snakepit_bridge.Worker(max_concurrency=4 if mode_async else None)
served = 0


@worker.command("echo")
def echo(args, ctx):
    global served
    served += 1
    return {"echoed": args, "pid": os.getpid(), "session_id": ctx.session_id, "served": served}


@worker.command("context")
def context(args, ctx):
    return {"traceparent": ctx.traceparent, "worker_id": ctx.worker_id, "pid": os.getpid()}


@worker.command("float")
def float_(args, ctx):
    return float(args["text"])


@worker.command("sleep")
def sleep(args, ctx):
    if args.get("marker"):
        # Says the call has started (for tests that kill the worker then).
        with open(args["marker"], "w") as f:
            f.write("started")
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"token": args.get("token"), "pid": os.getpid()}


if mode_async:
    import asyncio

    @worker.command("asleep")
    async def asleep(args, ctx):
        await asyncio.sleep(args.get("ms", 0) / 1000.0)
        return {"token": args.get("token"), "pid": os.getpid()}


@worker.command("fail")
def fail(args, ctx):
    raise ValueError(args.get("message", "bad value"))


@worker.command("exit")
def exit_(args, ctx):
    sys.stderr.write("exiting with %d on purpose\n" % args.get("code", 3))
    sys.stderr.flush()
    os._exit(args.get("code", 3))


@worker.command("segfault")
def segfault(args, ctx):
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(5)


@worker.command("print")
def print_(args, ctx):
    print("user output that must not reach the frame stream")
    return "printed"


@worker.command("stream")
def stream(args, ctx):
    for i in range(args.get("n", 3)):
        ctx.emit({"i": i})
    return {"done": args.get("n", 3)}


@worker.command("remember")
def remember(args, ctx):
    ctx.session.set(args["key"], args["value"])
    return ctx.session.get(args["key"])


@worker.command("recall")
def recall(args, ctx):
    return {"value": ctx.session.get(args["key"]), "pid": os.getpid()}


@worker.command("host")
def host(args, ctx):
    return ctx.call_host(args["function"], args.get("args", {}))


@worker.command("spawn_child")
def spawn_child(args, ctx):
    import subprocess

    child = subprocess.Popen(["sleep", "300"])
    return {"child_pid": child.pid, "pid": os.getpid()}


@worker.command("fork_child")
def fork_child(args, ctx):
    """A forked child (as multiprocessing's fork start method makes): it
    inherits every descriptor, the protocol pipes included."""
    child = os.fork()
    if child == 0:
        time.sleep(300)
        os._exit(0)
    return {"child_pid": child, "pid": os.getpid()}


@worker.command("spawn_escaped")
def spawn_escaped(args, ctx):
    """Children in sessions of their own: out of the worker's process group.
    `count` of them (1 by default), running `argv` (`sleep 300` by
    default)."""
    import subprocess

    argv = args.get("argv") or ["sleep", "300"]
    pids = [
        subprocess.Popen(argv, start_new_session=True).pid
        for _ in range(args.get("count", 1))
    ]
    return {"child_pid": pids[0], "child_pids": pids, "pid": os.getpid()}


@worker.command("grow")
def grow(args, ctx):
    """Holds on to `mb` MiB more memory (a leak, for recycling tests)."""
    _hoard.append(bytearray(args.get("mb", 1) * 1024 * 1024))
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"pid": os.getpid()}


_hoard = []


@worker.command("stderr_flood")
def stderr_flood(args, ctx):
    """Writes `mb` MiB to stderr with no newline (or `\\r` progress bars)."""
    sep = b"\r" if args.get("cr") else b""
    block = b"x" * (1024 * 1024 - len(sep)) + sep
    for _ in range(args.get("mb", 1)):
        sys.stderr.buffer.write(block)
    sys.stderr.buffer.write(b"\n")
    sys.stderr.flush()
    return {"pid": os.getpid()}


@worker.command("pid")
def pid(args, ctx):
    return {"pid": os.getpid()}

if os.environ.get("TEST_FAIL_IF_EXISTS") and os.path.exists(os.environ["TEST_FAIL_IF_EXISTS"]):
    print("refusing to start: " + os.environ["TEST_FAIL_IF_EXISTS"] + " exists", file=sys.stderr)
    sys.exit(3)

if os.environ.get("TEST_DIE_SOON_IF_EXISTS") and os.path.exists(os.environ["TEST_DIE_SOON_IF_EXISTS"]):
    # Starts (the handshake succeeds), then dies 200 ms later: a crash loop.
    def _die():
        print("dying on purpose", file=sys.stderr, flush=True)
        os._exit(7)

    threading.Timer(0.2, _die).start()

if os.environ.get("TEST_IGNORE_SIGTERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

if __name__ == "__main__":
    worker.run()
