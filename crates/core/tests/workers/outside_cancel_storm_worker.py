"""A worker for outside_cancel_storm.rs, built on the Python bridge.

Every command that a test calls with a `token` appends one line to the file
named by STORM_LOG as its handler starts: `<token> <pid>`. What the file
holds is what ran. A `gate` (a path) makes the handler wait until that file
exists, so that a test can keep every worker busy while it cancels the calls
behind them. `--async` serves the same commands as coroutines (the bridge's
async mode: several calls at once, cancel frames).
"""
import asyncio
import os
import sys
import time

import snakepit_bridge

mode_async = "--async" in sys.argv
worker = snakepit_bridge.Worker(max_concurrency=4 if mode_async else None)
LOG = os.environ.get("STORM_LOG")


def ran(args):
    token = args.get("token")
    if LOG and token is not None:
        line = ("%s %d\n" % (token, os.getpid())).encode()
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def gate_open(args):
    gate = args.get("gate")
    return not gate or os.path.exists(gate)


def arrived(args):
    """Marks this call arrived at the barrier; how many have."""
    d = args["dir"]
    open(os.path.join(d, str(args["token"])), "w").close()
    return len(os.listdir(d))


if not mode_async:

    @worker.command("run")
    def run(args, ctx):
        ran(args)
        until = time.monotonic() + 60
        while not gate_open(args) and time.monotonic() < until:
            time.sleep(0.005)
        time.sleep(args.get("ms", 0) / 1000.0)
        return {"token": args.get("token"), "pid": os.getpid()}

    @worker.command("run_then_pause")
    def run_then_pause(args, ctx):
        """Like `run`; then, once its reply is written, the worker pauses
        for `pause_ms` before it reads its next frame (as a worker in a long
        garbage collection, or on a loaded machine, would)."""
        ran(args)
        until = time.monotonic() + 60
        while not gate_open(args) and time.monotonic() < until:
            time.sleep(0.005)
        server = ctx._server
        write = server._write

        def write_then_pause(data):
            write(data)
            server._write = write
            time.sleep(args["pause_ms"] / 1000.0)

        server._write = write_then_pause
        return {"token": args.get("token"), "pid": os.getpid()}

    @worker.command("chunks")
    def chunks(args, ctx):
        ran(args)
        until = time.monotonic() + 60
        while not gate_open(args) and time.monotonic() < until:
            time.sleep(0.005)
        for i in range(args.get("n", 3)):
            ctx.emit({"token": args.get("token"), "i": i})
            time.sleep(args.get("ms", 0) / 1000.0)
        return {"token": args.get("token"), "pid": os.getpid()}

    @worker.command("barrier")
    def barrier(args, ctx):
        ran(args)
        until = time.monotonic() + 20
        while arrived(args) < args["n"] and time.monotonic() < until:
            time.sleep(0.005)
        return {"token": args["token"], "met": arrived(args) >= args["n"], "pid": os.getpid()}

else:

    @worker.command("run")
    async def arun(args, ctx):
        ran(args)
        until = time.monotonic() + 60
        while not gate_open(args) and time.monotonic() < until:
            await asyncio.sleep(0.005)
        await asyncio.sleep(args.get("ms", 0) / 1000.0)
        return {"token": args.get("token"), "pid": os.getpid()}

    @worker.command("chunks")
    async def achunks(args, ctx):
        ran(args)
        until = time.monotonic() + 60
        while not gate_open(args) and time.monotonic() < until:
            await asyncio.sleep(0.005)
        for i in range(args.get("n", 3)):
            ctx.emit({"token": args.get("token"), "i": i})
            await asyncio.sleep(args.get("ms", 0) / 1000.0)
        return {"token": args.get("token"), "pid": os.getpid()}

    @worker.command("barrier")
    async def abarrier(args, ctx):
        ran(args)
        until = time.monotonic() + 20
        while arrived(args) < args["n"] and time.monotonic() < until:
            await asyncio.sleep(0.005)
        return {"token": args["token"], "met": arrived(args) >= args["n"], "pid": os.getpid()}


if __name__ == "__main__":
    worker.run()
