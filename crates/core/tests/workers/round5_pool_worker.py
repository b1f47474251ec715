"""A bridge worker for crates/core/tests/outside_round5_pool.rs.

Its health pings (not its init handshake) take `ROUND5_PING_MS`
milliseconds (0 by default), so a test can call while one is in flight.
Commands: `pid` (after sleeping `args["ms"]`, 0 by default); `host` (calls the host function `args["function"]` and
returns its answer with the worker's pid).
"""
import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()
ping_ms = int(os.environ.get("ROUND5_PING_MS", "0"))


@worker.command("ping")
def ping(args, ctx):
    if args.get("health_check") and ping_ms:
        time.sleep(ping_ms / 1000.0)
    return {"status": "ok", "pid": os.getpid()}


@worker.command("pid")
def pid(args, ctx):
    time.sleep((args or {}).get("ms", 0) / 1000.0)
    return {"pid": os.getpid()}


@worker.command("host")
def host(args, ctx):
    answer = ctx.call_host(args["function"], args.get("args", {}))
    return {"answer": answer, "pid": os.getpid()}


if __name__ == "__main__":
    worker.run()
