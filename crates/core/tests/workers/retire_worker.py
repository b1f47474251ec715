"""A worker without the bridge for the tests of how the pool stops a worker.

argv[1] is a log file: the worker appends one line per thing that happens
to it, `<what> <pid> <time.monotonic()>`, with what being `start`, `eof`
(its stdin ended), `term` (SIGTERM arrived) or `exit` (it ends by itself).
argv[2] says what it does at end of input: `exit`, or `ignore` (it keeps
running). argv[3] says what it does on SIGTERM: `exit`, or `ignore`.
argv[4], when `clear-pdeathsig`, clears the parent-death signal the pool set
(a worker that escaped that layer).

Commands: `ping` (`status` ok and its pid; any other command too), `spawn_child` (starts `sleep 300`, which stays
in the worker's process group, and returns the child's pid).
"""
import os
import signal
import subprocess
import sys
import time

from raw_frames import read, write

log_path = sys.argv[1]
on_eof = sys.argv[2]
on_term = sys.argv[3]
extra = sys.argv[4] if len(sys.argv) > 4 else ""


def log(what):
    with open(log_path, "a") as f:
        f.write(f"{what} {os.getpid()} {time.monotonic():.6f}\n")


def bye(code):
    log("exit")
    os._exit(code)


def on_sigterm(_signum, _frame):
    log("term")
    if on_term == "exit":
        bye(0)


signal.signal(signal.SIGTERM, on_sigterm)
if extra == "clear-pdeathsig":
    import ctypes

    PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0) != 0:
        sys.exit("prctl failed")
log("start")



write({"type": "hello", "protocol": 1, "pid": os.getpid(), "capabilities": {"max_concurrency": 1}})

while True:
    req = read()
    if req is None:
        break
    if req.get("type") not in (None, "request"):
        continue
    rid, command = req["id"], req["command"]
    if command == "spawn_child":
        child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
        write({"id": rid, "success": True, "result": {"pid": os.getpid(), "child_pid": child.pid}})
    else:
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})

log("eof")
if on_eof == "exit":
    bye(0)
while True:
    time.sleep(3600)
