"""``ping``, which every worker answers: a pool starts with one, even when
the worker's author only wrote domain commands. Its result has the shape of
the original generic bridge's (plus ``pid``)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import Context

BRIDGE_TYPE = "generic"
PYTHON_VERSION = ".".join(str(n) for n in sys.version_info[:3])


def ping(args: Any, ctx: Context) -> dict[str, Any]:
    worker = ctx.worker
    return {
        "status": "ok",
        "bridge_type": BRIDGE_TYPE,
        "uptime": worker.uptime,
        "requests_handled": worker.requests_handled,
        "timestamp": time.time(),
        "worker_id": worker.worker_id or "unknown",
        "echo": args,
        "python_version": PYTHON_VERSION,
        "pid": worker.pid,
    }
