"""A worker for test_outside_round4.py: handlers that mix a coroutine's
chunks with its threads', call the host under names that are no string,
swallow SIGTERM's SystemExit, raise exceptions whose text or class lies,
or return coroutines.

``R4_ASYNC=1`` serves with the asyncio loop (``max_concurrency=4``, and the
handlers marked below as ``async def``); otherwise every handler is a plain
function and the worker runs one call at a time.
"""

import asyncio
import os
import sys
import threading
import time

import snakepit_bridge

ASYNC = os.environ.get("R4_ASYNC") == "1"
worker = snakepit_bridge.Worker(max_concurrency=4 if ASYNC else None)


def _note(text):
    sys.stderr.write(f"R4 {text}\n")
    sys.stderr.flush()


# --- chunks from the handler and from a thread it starts ----------------------

def _chunks_sync(args, ctx):
    ctx.emit("handler 1")
    thread = threading.Thread(target=ctx.emit, args=("thread 2",))
    thread.start()
    thread.join()
    ctx.emit("handler 3")
    return "done"


async def _chunks_async(args, ctx):
    ctx.emit("handler 1")
    # A thread started and joined in the same turn of the loop: its chunk
    # is written while the handler's first one still waits to go out.
    thread = threading.Thread(target=ctx.emit, args=("thread 2",))
    thread.start()
    thread.join()
    ctx.emit("handler 3")
    return "done"


def _progress(ctx, first, last):
    for i in range(first, last + 1):
        ctx.emit(i)


async def _executor_chunks_async(args, ctx):
    # The usual shape: progress from the coroutine, then from the work it
    # hands to a thread, then from the coroutine again.
    n = args.get("n", 10)
    _progress(ctx, 1, n)
    await asyncio.get_running_loop().run_in_executor(None, _progress, ctx, n + 1, 2 * n)
    _progress(ctx, 2 * n + 1, 3 * n)
    return "done"


def _executor_chunks_sync(args, ctx):
    n = args.get("n", 10)
    _progress(ctx, 1, n)
    thread = threading.Thread(target=_progress, args=(ctx, n + 1, 2 * n))
    thread.start()
    thread.join()
    _progress(ctx, 2 * n + 1, 3 * n)
    return "done"


worker.register("chunks", _chunks_async if ASYNC else _chunks_sync)
worker.register("executor_chunks", _executor_chunks_async if ASYNC else _executor_chunks_sync)


# --- host calls under a name that is no string --------------------------------

NAMES = {"ok": "lookup", "none": None, "int": 7, "list": ["session.get"], "bytes": b"session.get"}


def _host_names_sync(args, ctx):
    outcomes = {}
    for key in args["names"]:
        try:
            outcomes[key] = ["returned", ctx.call_host(NAMES[key], {})]
        except TypeError as exc:
            outcomes[key] = ["TypeError", str(exc)]
    return outcomes


async def _host_names_async(args, ctx):
    outcomes = {}
    for key in args["names"]:
        try:
            outcomes[key] = ["returned", await ctx.acall_host(NAMES[key], {})]
        except TypeError as exc:
            outcomes[key] = ["TypeError", str(exc)]
    return outcomes


worker.register("host_names", _host_names_async if ASYNC else _host_names_sync)


@worker.command("thread_host_names")
def thread_host_names(args, ctx):
    # The blocking form from a thread of the handler's, in either mode.
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=_host_names_sync(args, ctx)))
    thread.start()
    thread.join()
    return box["result"]


# --- a handler that swallows SIGTERM's SystemExit -----------------------------

@worker.command("swallow")
def swallow(args):
    try:
        _note("sleeping")
        time.sleep(args.get("seconds", 60))
    except BaseException as exc:  # what a careless retry loop does
        _note(f"swallowed {type(exc).__name__}")
    return "swallowed"


async def _offload_async(args, ctx):
    # Blocking work handed to the loop's default executor, as
    # asyncio.to_thread does (3.9+).
    _note("offloading")
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, args.get("seconds", 60))
    return "offloaded"


if ASYNC:
    worker.register("offload", _offload_async)


@worker.command("big")
def big(args):
    _note("big result")
    return "x" * args.get("size", 4 << 20)


# --- exceptions that lie about their text or their class ----------------------

class _Trap(str):
    """A message whose own methods raise: the bridge must use its text
    without calling them."""

    def encode(self, *args, **kwargs):
        raise RuntimeError("encode trapped")

    def __format__(self, spec):
        raise RuntimeError("__format__ trapped")

    def __len__(self):
        raise RuntimeError("__len__ trapped")

    def __eq__(self, other):
        raise RuntimeError("__eq__ trapped")

    def __hash__(self):
        raise RuntimeError("__hash__ trapped")

    def __bool__(self):
        raise RuntimeError("__bool__ trapped")

    def __str__(self):
        raise RuntimeError("__str__ trapped")


class TrapText(Exception):
    def __str__(self):
        return _Trap("the text of a trap")


class ClaimsSystemExit(Exception):
    """isinstance() asks __class__, which says SystemExit."""

    @property
    def __class__(self):
        return SystemExit


class ClassRaises(Exception):
    @property
    def __class__(self):
        raise RuntimeError("__class__ trapped")


class TrapName(Exception):
    pass


TrapName.__name__ = _Trap("TrapName")


class _TrapItems(dict):
    def items(self):
        raise TrapText()


LIARS = {
    "trap_text": TrapText,
    "claims_system_exit": lambda: ClaimsSystemExit("only claims to be SystemExit"),
    "class_raises": lambda: ClassRaises("its __class__ raises"),
    "trap_name": lambda: TrapName("named by a trap"),
}


def _lie_sync(args):
    if args["what"] == "unencodable":
        return _TrapItems(a=1)  # encoding it raises TrapText
    raise LIARS[args["what"]]()


async def _lie_async(args):
    return _lie_sync(args)


worker.register("lie", _lie_sync)
worker.register("async_lie", _lie_async if ASYNC else _lie_sync)


# --- maps whose __len__ or items() disagree with what they hold --------------

class _ShortLen(dict):
    def __len__(self):
        return 0


class _LongLen(dict):
    def __len__(self):
        return 5


class _OtherItems(dict):
    def items(self):
        return [("a", 1), ("b", 2)]


MAPS = {"short_len": _ShortLen, "long_len": _LongLen, "other_items": _OtherItems}


@worker.command("lying_map")
def lying_map(args):
    return {"value": MAPS[args["what"]](x=1)}


# --- results that are coroutines and generators ------------------------------

async def _later(args):
    return "awaited"


@worker.command("coroutine")
def coroutine(args):
    # A plain function returning a coroutine (a wrapper around an async
    # def without functools' help, say).
    return _later(args)


@worker.command("generator")
def generator(args):
    yield "never sent"


if ASYNC:
    @worker.command("async_noop")
    async def async_noop(args):
        return None


if __name__ == "__main__":
    worker.run()
