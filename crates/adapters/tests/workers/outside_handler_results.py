"""Handlers that return what the codec cannot carry, or raise what is not an
Exception, for outside_handler_results.rs. With OHR_ASYNC=1 the worker runs
in asyncio mode (an `async def` handler is registered)."""
import datetime
import os
import sys
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()
ASYNC = os.environ.get("OHR_ASYNC") == "1"


class Plain:
    def __init__(self):
        self.a = 1


class NotAnException(BaseException):
    """A BaseException of a library's own, as gevent's and trio's timeouts."""


def nested(depth):
    value = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return value


def cycle():
    items = []
    items.append(items)
    return {"v": items}


RESULTS = {
    "set": lambda a: {"v": {1, 2}},
    "object": lambda a: {"v": Plain()},
    "datetime": lambda a: {"v": datetime.datetime(2020, 1, 1)},
    "bytes": lambda a: {"v": b"\x00\xff"},
    "cycle": lambda a: cycle(),
    "surrogate": lambda a: {"v": "caf\udce9"},
    "tuple_key": lambda a: {(1, 2): "x"},
    "int_key": lambda a: {1: "a"},
    "colliding_keys": lambda a: {1: "int", "1": "str"},
    "inf": lambda a: {"v": float("inf"), "w": float("-inf")},
    "deep": lambda a: nested(a["depth"]),
    "generator": lambda a: (i for i in range(3)),
    "huge": lambda a: "x" * a["n"],
}


async def _later(args):
    return {"ran": True}


def forgot_to_await(args):
    """A plain function (a decorator's wrapper, say) that returns the
    coroutine of an `async def` instead of awaiting it."""
    return _later(args)


worker.register("coroutine", forgot_to_await)


def raiser(exc):
    def handler(args):
        raise exc
    return handler


RAISES = {
    "base_exception": NotAnException("not an Exception"),
    "generator_exit": GeneratorExit("closed by hand"),
    "keyboard_interrupt": KeyboardInterrupt("raised by the handler itself"),
    "stop_iteration": StopIteration("no more"),
    "recursion": RecursionError("too deep by hand"),
}

for name, fn in RESULTS.items():
    worker.register(name, fn)
for name, exc in RAISES.items():
    worker.register(name, raiser(exc))


@worker.command("pid")
def pid(args):
    return {"pid": os.getpid()}


@worker.command("slow")
def slow(args):
    time.sleep(args["ms"] / 1000)
    return {"pid": os.getpid()}


@worker.command("swallow")
def swallow(args, ctx):
    """Swallows the KeyboardInterrupt of its cancellation and returns late,
    which the README asks handlers not to do."""
    end = time.monotonic() + args["ms"] / 1000
    while time.monotonic() < end:
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            pass
    return {"pid": os.getpid(), "cancelled": ctx.cancelled}


@worker.command("print")
def print_text(args):
    print(args["text"])
    return {"pid": os.getpid()}


@worker.command("bad_chunk")
def bad_chunk(args, ctx):
    """A chunk the codec cannot carry, caught; then one it can."""
    caught = None
    try:
        ctx.emit({"v": {1, 2}})
    except Exception as exc:
        caught = type(exc).__name__
    ctx.emit("fine")
    return {"caught": caught}


@worker.command("bad_chunk_uncaught")
def bad_chunk_uncaught(args, ctx):
    ctx.emit({"v": {1, 2}})
    return {"sent": True}


@worker.command("child_reads_stdin")
def child_reads_stdin(args):
    """A child process left with the worker's stdin, as `subprocess.run`
    leaves it unless told otherwise, that reads a little of it, started
    after `hold` seconds (meanwhile the pool may write the next call)."""
    import subprocess

    time.sleep(args.get("hold", 0))
    done = subprocess.run(["head", "-c", str(args["bytes"])], stdout=subprocess.PIPE,
                          timeout=args["timeout"])
    return {"pid": os.getpid(), "child_read": len(done.stdout)}


@worker.command("close_sys_stdin")
def close_sys_stdin(args):
    sys.stdin.close()
    return {"pid": os.getpid()}


@worker.command("system_exit")
def system_exit(args):
    print("leaving by sys.exit", file=sys.stderr)
    sys.exit(3)


@worker.command("close_fd1")
def close_fd1(args):
    # fd 1 is stderr's copy once run() protected stdout; frames go elsewhere.
    os.close(1)
    return {"pid": os.getpid()}


@worker.command("close_sys_stdout")
def close_sys_stdout(args):
    sys.stdout.close()
    return {"pid": os.getpid()}


if ASYNC:
    def async_raiser(exc):
        async def handler(args):
            raise exc
        return handler

    for name, exc in RAISES.items():
        worker.register("async_" + name, async_raiser(exc))

    @worker.command("async_system_exit")
    async def async_system_exit(args):
        sys.exit(3)

    @worker.command("async_pid")
    async def async_pid(args):
        return {"pid": os.getpid()}


if __name__ == "__main__":
    worker.run()
