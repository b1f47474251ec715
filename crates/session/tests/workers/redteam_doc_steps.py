"""Runs the steps a test gives, through ctx.session and ctx.call_host, and
answers what each gave: {"ok": value} or {"caught": <HostCallError type>}.
`set_nested` stores an array nested `depth` levels deep; `get_depth`
answers how deep the value read is. A `wait` step creates the file
`started` and waits for the file `go`."""
import os
import time

import snakepit_bridge
from snakepit_bridge import HostCallError

worker = snakepit_bridge.Worker()


def run_step(step, ctx):
    op = step["op"]
    if op == "get":
        return ctx.session.get(step["key"])
    if op == "set":
        return ctx.session.set(step["key"], step["value"])
    if op == "delete":
        return ctx.session.delete(step["key"])
    if op == "set_nested":
        v = 0
        for _ in range(step["depth"]):
            v = [v]
        return ctx.session.set(step["key"], v)
    if op == "get_depth":
        v = ctx.session.get(step["key"])
        depth = 0
        while isinstance(v, list):
            v = v[0]
            depth += 1
        return depth
    if op == "program":
        return ctx.call_host("session.get_program", {"program_id": step["id"]})
    if op == "global":
        return ctx.call_host("session.get_global_program", {"program_id": step["id"]})
    if op == "store_program":
        return ctx.call_host(
            "session.store_program", {"program_id": step["id"], "program": step["value"]}
        )
    if op == "wait":
        with open(step["started"], "w"):
            pass
        deadline = time.monotonic() + 60
        while not os.path.exists(step["go"]):
            if time.monotonic() > deadline:
                raise TimeoutError("the test never said go")
            time.sleep(0.01)
        return None
    raise ValueError("unknown step " + op)


@worker.command("steps")
def steps(args, ctx):
    out = []
    for step in args["steps"]:
        try:
            out.append({"ok": run_step(step, ctx)})
        except HostCallError as e:
            out.append({"caught": e.type})
    return out


worker.run()
