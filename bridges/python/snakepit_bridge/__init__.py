"""Worker-side bridge for Snakepit pools.

    import snakepit_bridge

    worker = snakepit_bridge.Worker()

    @worker.command("greet")
    def greet(args, ctx):
        return {"hello": args.get("name", "world")}

    worker.run()
"""

from ._wire import FrameError, get_codec
from ._worker import (
    Cancelled,
    Context,
    HostCallError,
    Session,
    Worker,
    __version__,
    protect_stdout,
)

__all__ = [
    "Worker",
    "Context",
    "Session",
    "Cancelled",
    "HostCallError",
    "FrameError",
    "get_codec",
    "protect_stdout",
    "__version__",
]
