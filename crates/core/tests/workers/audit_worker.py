"""A worker without the bridge for `tests/audit_promises.rs`: it declares
`host_calls` in its hello and, asked to (`host_calls` with `n`), puts `n`
host calls in flight at once (distinct ids, every frame written before any
reply is read), then reads their `n` replies and answers with what came
back. `pid` answers its pid.
"""
import json
import os
import struct
import sys

out = sys.stdout.buffer


def read_exact(n):
    data = b""
    while len(data) < n:
        part = os.read(0, n - len(data))
        if not part:
            return None
        data += part
    return data


def read():
    head = read_exact(4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    payload = read_exact(n)
    return None if payload is None else json.loads(payload)


def frame(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(data)) + data


def write(obj):
    out.write(frame(obj))
    out.flush()


write({"type": "hello", "protocol": 1, "pid": os.getpid(),
       "capabilities": {"max_concurrency": 1, "host_calls": True}})

while True:
    req = read()
    if req is None:
        break
    if req.get("type") not in (None, "request"):
        continue
    rid, command, args = req["id"], req["command"], req.get("args") or {}
    if args.get("initialization") or command == "ping":
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
    elif command == "host_calls":
        n = args["n"]
        # All n in flight at once: written in one go, none answered yet.
        out.write(b"".join(
            frame({"type": "host_call", "id": i, "request_id": rid,
                   "function": "gate", "args": {"i": i}})
            for i in range(1, n + 1)))
        out.flush()
        replies = {}
        while len(replies) < n:
            reply = read()
            if reply is None:
                sys.exit(0)
            if reply.get("type") == "host_reply":
                replies[reply["id"]] = reply
        ok = all(r.get("success") and r.get("result") == {"i": i}
                 for i, r in replies.items())
        write({"id": rid, "success": True,
               "result": {"replies": len(replies), "all_ok": ok,
                          "ids": sorted(replies) == list(range(1, n + 1)),
                          "pid": os.getpid()}})
    elif command == "pid":
        write({"id": rid, "success": True, "result": {"pid": os.getpid()}})
    else:
        write({"id": rid, "success": False,
               "error": {"type": "UnknownCommand", "message": command}})
