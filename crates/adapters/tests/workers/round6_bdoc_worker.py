"""A worker for outside_bridges_doc_round6.rs: the rows of docs/bridges.md's
context table, host-call failures, the session store and cancellation, in a
Python worker. With BDOC_ASYNC=1 its handlers are `async def` (asyncio
mode); with BDOC_THREADS=1 they are plain functions run two at a time on
threads (`Worker(max_concurrency=2)`)."""

import asyncio
import os
import threading
import time

import snakepit_bridge
from snakepit_bridge import HostCallError

THREADS = os.environ.get("BDOC_THREADS") == "1"
worker = snakepit_bridge.Worker(max_concurrency=2 if THREADS else None)

# What `stall` saw when its call was given up, for `saw` to report.
SEEN = []
# How many `meet` calls have started.
MET = [0]
MET_LOCK = threading.Lock()


@worker.command("saw")
def saw(args):
    return list(SEEN)


def failure(exc):
    return {"class": type(exc).__name__, "type": exc.type, "message": exc.message}


if os.environ.get("BDOC_ASYNC") == "1":

    @worker.command("fields")
    async def fields(args, ctx):
        seen = await ctx.acall_host("whoami", {})
        return {
            "pid": os.getpid(),
            "request_id": ctx.request_id,
            "command": ctx.command,
            "session_id": ctx.session_id,
            "worker_id": ctx.worker_id,
            "timeout_ms": ctx.timeout_ms,
            "stream": ctx.stream,
            "chunk_sent": ctx.emit("a chunk"),
            "host_saw": seen,
        }

    @worker.command("bytes_to_host")
    async def bytes_to_host(args, ctx):
        out = {"pid": os.getpid()}
        try:
            await ctx.session.aset("k", b"\x00\x01binary")
            out["set"] = "stored"
        except HostCallError as exc:
            out["set"] = failure(exc)
        out["get"] = await ctx.session.aget("k")
        return out

    @worker.command("host_failures")
    async def host_failures(args, ctx):
        out = {"pid": os.getpid()}
        for name in ("fails", "nowhere"):
            try:
                out[name] = await ctx.acall_host(name, {"id": "x"})
            except HostCallError as exc:
                out[name] = failure(exc)
        return out

    @worker.command("stall")
    async def stall(args, ctx):
        try:
            await asyncio.sleep(60)
            SEEN.append("slept")
        except BaseException as exc:
            SEEN.append(type(exc).__name__)
            raise

    @worker.command("meet")
    async def meet(args, ctx):
        # Waits (at most 10 s) until a second `meet` has started.
        MET[0] += 1
        deadline = time.monotonic() + 10
        while MET[0] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return MET[0] >= 2

    @worker.command("delete")
    async def delete(args, ctx):
        await ctx.session.aset("d", 1)
        return [await ctx.session.adelete("d"), await ctx.session.adelete("d"),
                await ctx.session.aget("d")]

else:

    @worker.command("fields")
    def fields(args, ctx):
        seen = ctx.call_host("whoami", {})
        return {
            "pid": os.getpid(),
            "request_id": ctx.request_id,
            "command": ctx.command,
            "session_id": ctx.session_id,
            "worker_id": ctx.worker_id,
            "timeout_ms": ctx.timeout_ms,
            "stream": ctx.stream,
            "chunk_sent": ctx.emit("a chunk"),
            "host_saw": seen,
        }

    @worker.command("bytes_to_host")
    def bytes_to_host(args, ctx):
        out = {"pid": os.getpid()}
        try:
            ctx.session.set("k", b"\x00\x01binary")
            out["set"] = "stored"
        except HostCallError as exc:
            out["set"] = failure(exc)
        out["get"] = ctx.session.get("k")
        return out

    @worker.command("host_failures")
    def host_failures(args, ctx):
        out = {"pid": os.getpid()}
        for name in ("fails", "nowhere"):
            try:
                out[name] = ctx.call_host(name, {"id": "x"})
            except HostCallError as exc:
                out[name] = failure(exc)
        return out

    @worker.command("stall")
    def stall(args, ctx):
        try:
            if THREADS:
                # Plain functions on threads see only ctx.cancelled.
                deadline = time.monotonic() + 60
                while not ctx.cancelled and time.monotonic() < deadline:
                    time.sleep(0.01)
                SEEN.append("ctx.cancelled" if ctx.cancelled else "slept")
            else:
                time.sleep(60)
                SEEN.append("slept")
        except BaseException as exc:
            SEEN.append(type(exc).__name__)
            raise

    @worker.command("meet")
    def meet(args, ctx):
        # Waits (at most 10 s) until a second `meet` has started.
        with MET_LOCK:
            MET[0] += 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with MET_LOCK:
                if MET[0] >= 2:
                    return True
            time.sleep(0.01)
        return False

    @worker.command("delete")
    def delete(args, ctx):
        ctx.session.set("d", 1)
        return [ctx.session.delete("d"), ctx.session.delete("d"), ctx.session.get("d")]


if __name__ == "__main__":
    worker.run()
