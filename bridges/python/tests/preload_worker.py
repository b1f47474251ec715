"""A worker for the preload tests (test_preload.py), run as a template with
SNAKEPIT_PRELOAD=1 or directly.

PRELOAD_LOG: a file each process appends lines to: "import <pid>" from the
module-level code, "hook <pid>" from the after-fork hooks, "after-run <pid>"
if run() ever returns into the script, "atexit-template <pid>" and
"atexit-worker <pid>" from exit handlers registered at import and in a hook. Optional, from the environment:
PRELOAD_THREAD=1 starts a thread at import, PRELOAD_SOCKET=1 opens a socket
pair at import, PRELOAD_FAKE_TORCH=1 installs a `torch` module whose CUDA
reports initialised, PRELOAD_HOOK_RAISE=1 makes a hook raise,
PRELOAD_ASYNC=1 adds an async handler (the asyncio serve loop),
PRELOAD_PROTECT=1 calls protect_stdout() at import (in the template).
"""

import asyncio
import atexit
import gc
import os
import random
import socket
import sys
import threading
import types

import snakepit_bridge
from snakepit_bridge import generic

LOG = os.environ["PRELOAD_LOG"]


def note(what):
    with open(LOG, "a") as f:
        f.write(f"{what} {os.getpid()}\n")


note("import")
atexit.register(note, "atexit-template")

if os.environ.get("PRELOAD_THREAD") == "1":
    _stop = threading.Event()
    threading.Thread(target=_stop.wait, name="background-loader", daemon=True).start()

if os.environ.get("PRELOAD_SOCKET") == "1":
    HELD = socket.socketpair()

if os.environ.get("PRELOAD_FAKE_TORCH") == "1":
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(is_initialized=lambda: True)  # type: ignore[attr-defined]
    sys.modules["torch"] = torch

if os.environ.get("PRELOAD_PROTECT") == "1":
    snakepit_bridge.protect_stdout()
STDOUT_AT_IMPORT = sys.stdout

worker = snakepit_bridge.Worker()
generic.register(worker)
STATE = {"hooks": []}


@worker.after_fork
def first():
    STATE["hooks"].append(["first", os.getpid()])
    note("hook")
    atexit.register(note, "atexit-worker")


def second(w):
    STATE["hooks"].append(["second", os.getpid(), w is worker])
    if os.environ.get("PRELOAD_HOOK_RAISE") == "1":
        raise RuntimeError("the database is down")


worker.after_fork(second)


@worker.command("state")
def state(args, ctx):
    return {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "hooks": STATE["hooks"],
        "worker_pid": ctx.worker.pid,
        "worker_id": ctx.worker_id,
        "uptime": ctx.worker.uptime,
        "env": {name: os.environ.get(name) for name in args.get("env", [])},
        "random": random.random(),
        "frozen": gc.get_freeze_count(),
    }


if os.environ.get("PRELOAD_ASYNC") == "1":

    @worker.command("apid")
    async def apid(args):
        await asyncio.sleep(0)
        return os.getpid()


@worker.command("wait_for_host")
def wait_for_host(args, ctx):
    # Blocks until the test answers the host call.
    return ctx.call_host("release", {})


@worker.command("say")
def say(args):
    print("printed by a worker:", args["text"])
    return "said"


@worker.command("stdio")
def stdio(args):
    # A child left with the worker's stdin, as subprocess.run leaves it.
    import subprocess

    done = subprocess.run(["head", "-c", "4"], stdout=subprocess.PIPE, timeout=5)
    return {"child_read": len(done.stdout), "fd0": os.readlink("/proc/self/fd/0"),
            "sys_stdin": sys.stdin.read()}


@worker.command("close_and_print")
def close_and_print(args):
    sys.stdout.close()
    print("printed after the close:", args["text"])
    print("printed to the import-time stdout:", args["text"], file=STDOUT_AT_IMPORT)
    return "printed"


worker.run()
note("after-run")
