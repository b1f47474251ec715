"""The generic commands of the original Snakepit Python bridge.

``ping``, ``echo``, ``compute`` and ``info`` with the original result shapes
(plus ``pid`` in ``ping``), except that failures are failed replies rather
than successes carrying ``status: "error"``. ``main()`` serves them; it is
what ``generic_worker.py`` runs.
"""

import os
import sys
import time

BRIDGE_TYPE = "generic"
_PYTHON_VERSION = "%d.%d.%d" % sys.version_info[:3]


def ping(args, ctx):
    worker = ctx.worker
    return {
        "status": "ok",
        "bridge_type": BRIDGE_TYPE,
        "uptime": worker.uptime,
        "requests_handled": worker.requests_handled,
        "timestamp": time.time(),
        "worker_id": worker.worker_id or "unknown",
        "echo": args,
        "python_version": _PYTHON_VERSION,
        "pid": worker.pid,
    }


def echo(args):
    return {"status": "ok", "echoed": args, "timestamp": time.time()}


def compute(args):
    operation = args.get("operation", "add")
    a = args.get("a", 0)
    b = args.get("b", 0)
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
        raise ValueError("Unsupported operation: %s" % operation)
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
            "python_version": _PYTHON_VERSION,
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
    from ._worker import Worker

    worker = register(Worker())
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
