"""Worker-side bridge for Snakepit pools.

    import snakepit_bridge

    worker = snakepit_bridge.Worker()

    @worker.command("greet")
    def greet(args, ctx):
        return {"hello": args.get("name", "world")}

    worker.run()
"""

import sys as _sys

# The modules below need Python 3.8. This check is written so that older
# interpreters (2.7 included) can read it, and say so instead of failing
# on a later module's syntax.
if _sys.version_info < (3, 8):
    raise ImportError(
        "snakepit_bridge needs Python 3.8 or later; %s is Python %s"
        % (_sys.executable or "this interpreter", _sys.version.split()[0])
    )

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
