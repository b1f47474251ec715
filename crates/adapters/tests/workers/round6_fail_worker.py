"""For outside_failures_round6.rs: a Python worker on the bundled bridge in
asyncio mode (several calls at once on one worker). `sleep` notes its token
and pid in the directory `dir` names once it runs."""
import asyncio
import os

import snakepit_bridge

# Start-up faults, as the environment asks: ROUND6_PID_FILE gets the pid;
# ROUND6_EXIT_AT_LOAD exits with that status after a line on stderr;
# ROUND6_SLEEP_AT_LOAD_MS sleeps that long before the handshake.
if os.environ.get("ROUND6_PID_FILE"):
    with open(os.environ["ROUND6_PID_FILE"], "w") as f:
        f.write(str(os.getpid()))
if os.environ.get("ROUND6_EXIT_AT_LOAD"):
    os.write(2, b"model file missing, giving up\n")
    os._exit(int(os.environ["ROUND6_EXIT_AT_LOAD"]))
if os.environ.get("ROUND6_SLEEP_AT_LOAD_MS"):
    import time

    time.sleep(int(os.environ["ROUND6_SLEEP_AT_LOAD_MS"]) / 1000.0)

worker = snakepit_bridge.Worker(max_concurrency=int(os.environ.get("ROUND6_CONCURRENCY", "4")))


@worker.command("sleep")
async def sleep(args, ctx):
    if args.get("dir"):
        with open(os.path.join(args["dir"], str(args["token"])), "w") as f:
            f.write(str(os.getpid()))
    await asyncio.sleep(args.get("ms", 0) / 1000.0)
    return {"token": args["token"], "pid": os.getpid()}


@worker.command("segfault")
async def segfault(args, ctx):
    """Reads address 0: a real segmentation fault, after a line on stderr
    that the crash report's tail must carry."""
    import ctypes
    import sys

    sys.stderr.write("about to crash on purpose\n")
    sys.stderr.flush()
    ctypes.string_at(0)


if __name__ == "__main__":
    worker.run()
