"""A worker for test_outside_round3.py: the generic commands plus handlers
that return what no codec can carry, raise BaseException subclasses, print
to stdout, or report what a host call raised.

``R3_ASYNC=1`` adds an ``async def`` handler, so the worker serves with the
asyncio loop (plain handlers then run on threads).
"""

import os
import sys

import snakepit_bridge
from snakepit_bridge import generic

worker = generic.register(snakepit_bridge.Worker())


class _Opaque:
    pass


def _cycle():
    items = {}
    items["self"] = items
    return items


def _generator():
    yield 1


RESULTS = {
    "set": lambda: {1, 2},
    "generator": lambda: _generator(),
    "object": lambda: _Opaque(),
    "cycle": _cycle,
    "nan": lambda: float("nan"),
    "big_int": lambda: 2**64,
    "negative_big_int": lambda: -(2**63) - 1,
}


@worker.command("same")
def same(args):
    return args


@worker.command("give")
def give(args):
    return {"value": RESULTS[args["what"]]()}


class _Custom(BaseException):
    pass


RAISES = {
    "generator_exit": lambda: GeneratorExit("closed by the handler"),
    "keyboard_interrupt": lambda: KeyboardInterrupt("raised by the handler"),
    "custom_base": lambda: _Custom("a BaseException of its own"),
    "system_exit": lambda: SystemExit(4),
}


@worker.command("raise")
def raise_(args):
    raise RAISES[args["what"]]()


class _Unencodable(dict):
    """A map whose items() raises: both codecs call it for a dict subclass,
    so encoding the result raises what the handler chose."""

    def __init__(self, what):
        super().__init__(a=1)
        self.what = what

    def items(self):
        raise RAISES[self.what]()


@worker.command("unencodable")
def unencodable(args):
    return {"value": _Unencodable(args["what"])}


@worker.command("exit")
def exit_(args):
    sys.stderr.write("round3: exiting with %r\n" % (args.get("code"),))
    sys.stderr.flush()
    sys.exit(args.get("code"))


@worker.command("print")
def print_(args):
    print("round3 printed", args.get("tag"))
    sys.stdout.write("round3 written to sys.stdout\n")
    os.write(1, b"round3 written to fd 1\n")
    return "printed"


@worker.command("host")
def host(args, ctx):
    """The outcome of one host call, as data."""
    try:
        return {"ok": ctx.call_host("f", {})}
    except snakepit_bridge.HostCallError as exc:
        return {"error": [type(exc.type).__name__, exc.type, type(exc.message).__name__, exc.message]}


if os.environ.get("R3_ASYNC") == "1":

    @worker.command("async_exit")
    async def async_exit(args):
        sys.exit(args.get("code"))

    @worker.command("async_raise")
    async def async_raise(args):
        raise RAISES[args["what"]]()


if __name__ == "__main__":
    sys.exit(worker.run())
