"""A raw protocol worker (no bridge) for crates/core/tests/review_worker.rs.

Its hello's capabilities come from the REVIEW_CAPS environment variable
(JSON, default one call at a time). Commands:

- `ok`: replies {pid}.
- `sleep` {ms}: sleeps, then replies {pid, id: its request id}.
- `close_stdout`: closes its stdout and lives on without reading stdin.
- `host_after_reply` {function}: replies first, then makes a host call for
  the request that just ended and keeps its reply for `last_host`.
- `host_for` {function, request_id | offset}: makes a host call naming
  `request_id` (any number; else its own id plus `offset`), then replies
  {reply: the host reply, named: the request id it named}.
- `host_then_sleep` {function, ms, read_ahead}: makes a host call, reads
  the next frame ahead if `read_ahead`, sleeps, then
  replies {pid, size} (size: the length of the host reply's result).
- `last_host`: replies with the host reply kept by `host_after_reply`.
- `ahead_then_exit`: replies {pid}, then reads every frame already in its
  stdin (the calls written ahead) and appends their ids to the file named
  by REVIEW_LOG, then exits 3 without answering them.
"""
import json
import os
import struct
import sys
import time

inp = sys.stdin.buffer
out = sys.stdout.buffer


def read():
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(inp.read(n))


def write(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


caps = json.loads(os.environ.get("REVIEW_CAPS", '{"max_concurrency": 1}'))
write({"type": "hello", "protocol": 1, "pid": os.getpid(), "capabilities": caps})

host_id = 0
last_host = None
waiting = []  # requests read while waiting for a host reply


def host_call(function, request_id, args=None):
    """Sends a host call and reads until its reply; requests read meanwhile
    wait in `waiting`."""
    global host_id
    host_id += 1
    hid = host_id
    write({"type": "host_call", "id": hid, "request_id": request_id,
           "function": function, "args": args or {}})
    while True:
        f = read()
        if f is None:
            sys.exit(0)
        if f.get("type") == "host_reply" and f.get("id") == hid:
            return f
        waiting.append(f)


def next_request():
    if waiting:
        return waiting.pop(0)
    return read()


while True:
    req = next_request()
    if req is None:
        break
    if req.get("type") not in (None, "request"):
        continue
    rid = req["id"]
    args = req.get("args") or {}
    cmd = req.get("command")
    if args.get("initialization") or args.get("health_check"):
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
        continue
    if cmd == "sleep":
        time.sleep(args.get("ms", 0) / 1000)
        write({"id": rid, "success": True, "result": {"pid": os.getpid(), "id": rid}})
    elif cmd == "close_stdout":
        os.close(1)
        time.sleep(120)
    elif cmd == "host_after_reply":
        write({"id": rid, "success": True, "result": {"pid": os.getpid()}})
        last_host = host_call(args["function"], rid)
    elif cmd == "host_for":
        named = args.get("request_id", rid + args.get("offset", 0))
        reply = host_call(args["function"], named)
        write({"id": rid, "success": True, "result": {"reply": reply, "named": named}})
    elif cmd == "host_then_sleep":
        reply = host_call(args["function"], rid)
        if args.get("read_ahead"):
            # Reads the next frame (a call written ahead) before working on,
            # as a worker with a reader thread does.
            f = read()
            if f is not None:
                waiting.append(f)
        time.sleep(args.get("ms", 0) / 1000)
        size = len(json.dumps(reply.get("result")))
        write({"id": rid, "success": True, "result": {"pid": os.getpid(), "size": size}})
    elif cmd == "last_host":
        write({"id": rid, "success": True, "result": last_host})
    elif cmd == "ahead_then_exit":
        write({"id": rid, "success": True, "result": {"pid": os.getpid()}})
        time.sleep(0.3)
        os.set_blocking(0, False)
        seen = []
        try:
            data = os.read(0, 1 << 20)
        except BlockingIOError:
            data = b""
        while len(data) >= 4:
            (n,) = struct.unpack(">I", data[:4])
            if len(data) < 4 + n:
                break
            seen.append(json.loads(data[4:4 + n]).get("id"))
            data = data[4 + n:]
        with open(os.environ["REVIEW_LOG"], "a") as f:
            f.write(json.dumps(seen) + "\n")
        os._exit(3)
    else:
        write({"id": rid, "success": True, "result": {"pid": os.getpid(), "command": cmd}})
