"""The generic commands of the original Snakepit Python bridge.

``ping``, ``echo``, ``compute`` and ``info`` with the original result shapes
(plus ``pid`` in ``ping``), except that failures are failed replies rather
than successes carrying ``status: "error"``. ``main()`` serves them; it is
what ``generic_worker.py`` runs.
"""

import os
import sys
import time

from ._ping import BRIDGE_TYPE, PYTHON_VERSION, ping
from ._worker import Worker

__all__ = ["BRIDGE_TYPE", "ping", "echo", "compute", "info", "register", "main"]


def echo(args):
    return {"status": "ok", "echoed": args, "timestamp": time.time()}


def _is_number(value):
    # bool is an int subclass, but True + True is not arithmetic a caller meant.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compute(args, ctx=None):
    operation = args.get("operation", "add")
    a = args.get("a", 0)
    b = args.get("b", 0)
    if not (_is_number(a) and _is_number(b)):
        raise ValueError(
            f"Operands a and b must be numbers, got {type(a).__name__} and {type(b).__name__}"
        )
    try:
        if operation == "add":
            result = a + b
        elif operation == "subtract":
            result = a - b
        elif operation == "multiply":
            result = a * b
        elif operation == "divide":
            if b == 0:
                raise ValueError("Division by zero")
            result = a / b
        else:
            raise ValueError(f"Unsupported operation: {operation}")
    except OverflowError as exc:
        # An integer too large for a float (JSON carries any number of
        # digits) met a float or a division: compute fails with ValueError
        # only, as docs/protocol.md section 7 says.
        raise ValueError(f"Operands out of range: {exc}") from None
    if ctx is not None and isinstance(result, int):
        # An integer result the codec cannot carry (MessagePack: past 64
        # bits; JSON: past Python's limit on the digits of an int) is
        # compute's error too, not the bridge's TypeError for a result.
        try:
            ctx.worker.codec.encode(result)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"Result out of range: {exc}") from None
    return {
        "status": "ok",
        "operation": operation,
        "inputs": {"a": a, "b": b},
        "result": result,
        "timestamp": time.time(),
    }


def info(args, ctx):
    import platform  # only here: it is slow to import and rarely needed

    worker = ctx.worker
    return {
        "status": "ok",
        "bridge_info": {
            "name": worker.name,
            "version": worker.version,
            "supported_commands": worker.commands,
            "uptime": worker.uptime,
            "total_requests": worker.requests_handled,
        },
        "system_info": {
            "python_version": PYTHON_VERSION,
            "platform": platform.platform(),
            "pid": os.getpid(),
        },
        "timestamp": time.time(),
    }


def register(worker):
    """Add the generic commands to ``worker``; returns the worker."""
    worker.register("ping", ping)
    worker.register("echo", echo)
    worker.register("compute", compute)
    worker.register("info", info)
    return worker


def main(argv=None):
    """Serve the generic commands until stdin closes.

    Arguments such as ``--mode pool-worker`` or ``--snakepit-run-id X`` are
    accepted and ignored: the pool passes them for the original's sake.
    """
    worker = register(Worker())
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
