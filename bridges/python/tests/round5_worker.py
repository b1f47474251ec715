"""A worker for test_outside_round5.py: results, errors, chunks and host
call arguments of a size the test picks, to meet the pool's frame limit
(SNAKEPIT_MAX_FRAME_SIZE), and results of types that derive from the
built-in ones.

``R5_ASYNC=1`` serves with the asyncio loop (``max_concurrency=4``, and the
``a...`` handlers are ``async def``); otherwise every handler is a plain
function and the worker runs one call at a time.
"""

import collections
import enum
import os
import sys
import threading
import time

import snakepit_bridge
from snakepit_bridge import HostCallError, ResultTooLarge

ASYNC = os.environ.get("R5_ASYNC") == "1"
worker = snakepit_bridge.Worker(max_concurrency=4 if ASYNC else None)
snakepit_bridge.generic.register(worker)


def note(text):
    sys.stderr.write(f"R5 {text}\n")
    sys.stderr.flush()


@worker.command("limit")
def limit(args, ctx):
    return ctx.worker.max_frame_size


@worker.command("blob")
def blob(args):
    return "x" * args["n"]


@worker.command("args_size")
def args_size(args):
    return len(args["s"])


@worker.command("raise_big")
def raise_big(args):
    raise ValueError("e" * args["n"])


def _stream(args, ctx):
    """Emits a chunk of each size in ``sizes``. With ``catch`` it catches
    ResultTooLarge, notes what the next emit returns, and returns "done"."""
    for i, size in enumerate(args["sizes"]):
        try:
            ctx.emit("c" * size)
        except ResultTooLarge as exc:
            if not args.get("catch"):
                raise
            note(f"{ctx.request_id} caught {type(exc).__name__}: {exc}")
            note(f"{ctx.request_id} next emit returned {ctx.emit('after')}")
    return "done"


@worker.command("stream")
def stream(args, ctx):
    return _stream(args, ctx)


@worker.command("thread_stream")
def thread_stream(args, ctx):
    """The same from a thread the handler starts and joins."""
    caught = []

    def run():
        try:
            _stream(args, ctx)
        except ResultTooLarge as exc:
            caught.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if caught:
        raise caught[0]
    return "done"


@worker.command("host_big")
def host_big(args, ctx):
    try:
        return {"result": ctx.call_host("lookup", {"s": "h" * args["n"]})}
    except HostCallError as exc:
        return {"type": exc.type, "message": exc.message}


@worker.command("host_named")
def host_named(args, ctx):
    try:
        return {"result": ctx.call_host("f" * args["n"], {})}
    except HostCallError as exc:
        return {"type": exc.type, "message": exc.message}


@worker.command("host_big_then_sleep")
def host_big_then_sleep(args, ctx):
    # Arguments that take a while to encode (a long list of numbers), then
    # a long sleep: a SIGINT that came while they were encoded must still
    # cancel the call.
    numbers = list(range(args["n"]))
    note(f"{ctx.request_id} encoding")
    try:
        ctx.call_host("lookup", {"numbers": numbers})
    except HostCallError as exc:
        note(f"{ctx.request_id} host call failed: {exc.type}")
    note(f"{ctx.request_id} sleeping")
    time.sleep(args.get("sleep", 60))
    return "slept"


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Ratio(float):
    pass


Pair = collections.namedtuple("Pair", "left right")


@worker.command("derived")
def derived(args):
    """Values of types derived from the built-in ones, as JSON writes them."""
    return {
        "tuple": (1, (2, 3)),
        "pair": Pair(1, [2]),
        "intenum": Color.RED,
        "str": Name("n"),
        "float": Ratio(0.5),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "default": collections.defaultdict(int, {"k": 1}),
        "counter": collections.Counter({"z": 3}),
    }


# R5_COUNT_PARSE=1: the sync loop counts the frames it decodes (parse_count).
PARSED = [0]
if os.environ.get("R5_COUNT_PARSE") == "1":
    from snakepit_bridge._sync import SyncServer

    _parse = SyncServer.parse

    def _counting_parse(self, payload):
        PARSED[0] += 1
        return _parse(self, payload)

    SyncServer.parse = _counting_parse


@worker.command("parse_count")
def parse_count(args):
    return PARSED[0]


if ASYNC:

    @worker.command("ablob")
    async def ablob(args):
        return "x" * args["n"]

    @worker.command("astream")
    async def astream(args, ctx):
        return _stream(args, ctx)

    @worker.command("ahost_big")
    async def ahost_big(args, ctx):
        try:
            return {"result": await ctx.acall_host("lookup", {"s": "h" * args["n"]})}
        except HostCallError as exc:
            return {"type": exc.type, "message": exc.message}


if __name__ == "__main__":
    worker.run()
