"""Worker-side bridge for Snakepit pools.

    import snakepit_bridge

    worker = snakepit_bridge.Worker()

    @worker.command("greet")
    def greet(args, ctx):
        return {"hello": args.get("name", "world")}

    worker.run()
"""

from ._context import Cancelled, Context, HostCallError, ResultTooLarge, Session
from ._server import protect_stdout
from ._version import __version__
from ._wire import FrameError, get_codec
from ._worker import Worker

# `snakepit_bridge.generic.register(worker)` after `import snakepit_bridge`
# alone, as the README writes it.
from . import generic  # noqa: E402  (after Worker, which it uses)

__all__ = [
    "Worker",
    "Context",
    "Session",
    "Cancelled",
    "HostCallError",
    "ResultTooLarge",
    "FrameError",
    "get_codec",
    "protect_stdout",
    "__version__",
]
