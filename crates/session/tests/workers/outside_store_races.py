"""A worker for crates/session/tests/outside_store_races.rs.

`run` carries out `args["ops"]` in order, each one of:
  {"op": "set", "key": k, "value": v}   ctx.session.set
  {"op": "get", "key": k}               ctx.session.get
  {"op": "sleep", "s": seconds}
  {"op": "signal", "path": p}           creates the file p
  {"op": "wait", "path": p}             waits (up to 60 s) for the file p
and answers {"pid": ..., "results": [...]}, one result per op: {"value": v}
for a get, {"ok": true} otherwise, or {"caught": <HostCallError.type>} when a
host call failed (the handler goes on with the next op).
"""
import os
import time

import snakepit_bridge
from snakepit_bridge import HostCallError

worker = snakepit_bridge.Worker()


@worker.command("run")
def run(args, ctx):
    results = []
    for op in args.get("ops", []):
        kind = op["op"]
        try:
            if kind == "set":
                ctx.session.set(op["key"], op["value"])
                results.append({"ok": True})
            elif kind == "get":
                results.append({"value": ctx.session.get(op["key"])})
            elif kind == "sleep":
                time.sleep(op["s"])
                results.append({"ok": True})
            elif kind == "signal":
                with open(op["path"], "w"):
                    pass
                results.append({"ok": True})
            elif kind == "wait":
                deadline = time.monotonic() + 60
                while not os.path.exists(op["path"]):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the test never said go")
                    time.sleep(0.01)
                results.append({"ok": True})
            else:
                raise ValueError("unknown op " + kind)
        except HostCallError as e:
            results.append({"caught": e.type, "message": e.message})
    return {"pid": os.getpid(), "results": results}


worker.run()
