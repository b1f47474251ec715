"""A worker for crates/adapters/tests/redteam_preload.rs: a "model" loaded at
module level (so once, in the template, when preloaded), and commands that
tell the test what each process holds and sees.

Knobs (environment, read at import):
- RT_MARKER: a file the module-level code appends its pid to;
- RT_SLOW_RELOAD_MS: with RT_MARKER, a load after the first (a second
  template) sleeps that long;
- RT_LOAD_MS: every load sleeps that long;
- RT_ASYNC: also register an `async def` command (asyncio mode);
- RT_MODEL_MB: that many MiB of non-zero bytes, the model's weights;
- RT_OBJECTS: that many distinct Python objects (a model made of objects);
- RT_FAIL_IF: a path; when it exists the load raises (in load_weights);
- RT_PRINT: print this line at import, without protect_stdout and without
  flushing (stdout is a pipe: the text sits in the buffer at fork time);
- RT_PRINT_MB: print that many MiB at import.
"""

import gc
import hashlib
import os
import subprocess
import sys
import time

LOADED_IN = os.getpid()
if os.environ.get("RT_MARKER"):
    with open(os.environ["RT_MARKER"], "a+") as f:
        f.seek(0)
        reload = bool(f.read().strip())
        f.write(f"{LOADED_IN}\n")
    if reload and os.environ.get("RT_SLOW_RELOAD_MS"):
        time.sleep(int(os.environ["RT_SLOW_RELOAD_MS"]) / 1000)
if os.environ.get("RT_LOAD_MS"):
    time.sleep(int(os.environ["RT_LOAD_MS"]) / 1000)

if os.environ.get("RT_PRINT"):
    print(os.environ["RT_PRINT"])  # no flush: buffered when the fork comes
if os.environ.get("RT_PRINT_MB"):
    line = "x" * 1023
    for _ in range(int(os.environ["RT_PRINT_MB"]) * 1024):
        print(line)


def load_weights(path):
    if os.path.exists(path):
        raise FileNotFoundError(f"redteam weights unreadable: {path}")


if os.environ.get("RT_FAIL_IF"):
    load_weights(os.environ["RT_FAIL_IF"])

MODEL = b"\x01" * (int(os.environ.get("RT_MODEL_MB", "0")) << 20)
OBJECTS = [f"object-{i}" for i in range(int(os.environ.get("RT_OBJECTS", "0")))]

from snakepit_bridge import Worker  # noqa: E402

worker = Worker()
GROWN = []


@worker.command
def whoami(args, ctx):
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "loaded_in": LOADED_IN,
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "rt_env": os.environ.get("RT_ENV"),
        "run_id": os.environ.get("SNAKEPIT_RUN_ID"),
        "worker_id": os.environ.get("SNAKEPIT_WORKER_ID"),
        "ctx_worker_id": ctx.worker_id,
        "session": ctx.session_id,
    }


@worker.command
def touch(args):
    """What serving does to the model: read every byte of it, and a full
    collection (which, without gc.freeze, would write to every object)."""
    gc.collect()
    digest = hashlib.sha256(MODEL).hexdigest()
    gc.collect()
    return {"pid": os.getpid(), "digest": digest, "objects": len(OBJECTS)}


@worker.command
def grow(args):
    """Memory of this worker's own: `mb` MiB, written."""
    GROWN.append(bytearray(b"\x02") * (args["mb"] << 20))
    return {"pid": os.getpid()}


@worker.command
def spawn_child(args):
    child = subprocess.Popen(["sleep", "300"])
    return {"pid": os.getpid(), "child_pid": child.pid}


@worker.command
def spawn_escaped(args):
    """A child that leaves the worker's process group (setsid)."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    return {"pid": os.getpid(), "child_pid": child.pid}


@worker.command
def nap(args, ctx):
    """Sleeps `ms`; returns whether it was cancelled."""
    time.sleep(args["ms"] / 1000)
    return {"pid": os.getpid(), "cancelled": ctx.cancelled}


if os.environ.get("RT_ASYNC"):
    import asyncio

    @worker.command
    async def anap(args, ctx):
        await asyncio.sleep(args["ms"] / 1000)
        return {"pid": os.getpid()}


@worker.command
def sleep(args):
    time.sleep(args.get("ms", 0) / 1000)
    return {"pid": os.getpid(), "ppid": os.getppid()}


worker.run()
