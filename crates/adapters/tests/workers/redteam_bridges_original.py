#!/usr/bin/env python3
"""A worker in the original Elixir Snakepit's style, written from its docs
(shared/reference/upstream-wire-protocol.md): no hello, no bridge library,
keys sorted, a `timestamp` in every reply, errors as plain strings, header
and payload written separately. Records what it sees, for the tests."""
import json
import os
import select
import struct
import sys
import time
from datetime import datetime, timezone

seen_types = []      # `type` fields of frames received (the original knows none)
seen_keys = set()    # every top-level key of every request


def now():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def send(obj):
    data = json.dumps(obj, sort_keys=True).encode("utf-8")
    out = sys.stdout.buffer
    out.write(struct.pack(">I", len(data)))
    out.flush()
    out.write(data)
    out.flush()


def handle(req):
    command = req.get("command")
    args = req.get("args") or {}
    if command == "ping":
        return {"status": "ok", "message": "pong", "worker_id": args.get("worker_id", "unknown"),
                "pid": os.getpid()}
    if command == "echo":
        return {"status": "ok", "echoed": args}
    if command == "sleep":
        time.sleep(args.get("ms", 0) / 1000.0)
        ahead = bool(select.select([0], [], [], 0)[0])
        return {"slept": args.get("ms", 0), "ahead": ahead, "pid": os.getpid()}
    if command == "seen":
        return {"types": seen_types, "keys": sorted(seen_keys), "pid": os.getpid()}
    if command == "fail":
        raise ValueError("failed on purpose: %s" % args.get("why", "?"))
    raise KeyError("Unknown command: %s" % command)


def read_exact(n):
    # Straight from descriptor 0, nothing buffered: `sleep` looks at the
    # descriptor to see whether the pool wrote another request meanwhile.
    data = b""
    while len(data) < n:
        part = os.read(0, n - len(data))
        if not part:
            return None
        data += part
    return data


def main():
    sys.stderr.write("original-style python bridge started\n")
    sys.stderr.flush()
    while True:
        head = read_exact(4)
        if head is None:
            break
        (length,) = struct.unpack(">I", head)
        payload = read_exact(length)
        if payload is None:
            break
        req = json.loads(payload.decode("utf-8"))
        if "type" in req:
            seen_types.append(req["type"])
        seen_keys.update(req.keys())
        try:
            send({"id": req.get("id"), "success": True, "result": handle(req), "timestamp": now()})
        except KeyError as e:
            send({"id": req.get("id"), "success": False, "error": e.args[0], "timestamp": now()})
        except Exception as e:
            send({"id": req.get("id"), "success": False, "error": str(e), "timestamp": now()})


if __name__ == "__main__":
    main()
