"""A bridge worker whose handler waits for the test before using its session.

`wait_then_get` creates the file `args["started"]`, waits (up to 60 s) for
the file `args["go"]`, then calls `ctx.session.get(args["key"])`. It answers
`{"caught": <HostCallError.type>, "message": ...}` if the host call failed,
else `{"value": <the value>}`. Used by crates/session/tests/promises.rs.
"""
import os
import time

import snakepit_bridge
from snakepit_bridge import HostCallError

worker = snakepit_bridge.Worker()


@worker.command("wait_then_get")
def wait_then_get(args, ctx):
    with open(args["started"], "w"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(args["go"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never said go")
        time.sleep(0.01)
    try:
        return {"value": ctx.session.get(args["key"])}
    except HostCallError as e:
        return {"caught": e.type, "message": e.message}


worker.run()
