"""A worker for the `snakepit bench` tests, written without the bridge.

It answers every call of a pool. In the benchmark's raw loop (a
SNAKEPIT_WORKER_ID that starts with `raw_`) it misbehaves as
SNAKEPIT_TEST_RAW says, from its first call after the init handshake:

- `hang`: starts a child of its own (`sleep 300`, in the worker's process
  group), writes "<worker pid> <child pid>" to $SNAKEPIT_TEST_PIDS, and never
  answers;
- `huge_frame`: sends a length prefix of 4 GiB - 1 and nothing after it,
  keeping stdout open.
"""
import json
import os
import struct
import subprocess
import sys
import time

inp = sys.stdin.buffer
out = sys.stdout.buffer
raw = os.environ.get("SNAKEPIT_WORKER_ID", "").startswith("raw_")
mode = os.environ.get("SNAKEPIT_TEST_RAW", "")


def read():
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(inp.read(n))


def write(obj):
    data = json.dumps(obj).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


while True:
    req = read()
    if req is None:
        break
    rid = req["id"]
    if raw and not req["args"].get("initialization"):
        if mode == "hang":
            child = subprocess.Popen(["sleep", "300"])
            path = os.environ["SNAKEPIT_TEST_PIDS"]
            with open(path + ".tmp", "w") as f:
                f.write("%d %d" % (os.getpid(), child.pid))
            os.rename(path + ".tmp", path)
            time.sleep(300)
        elif mode == "huge_frame":
            out.write(struct.pack(">I", 0xFFFFFFFF))
            out.flush()
            time.sleep(300)
    write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
