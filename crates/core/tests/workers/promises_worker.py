"""A worker without the bridge for tests of what docs/protocol.md promises.

argv[1] is a file where every frame received is appended as one line, its
payload exactly as it came (JSON keeps its key order). argv[2] picks what
the worker declares in its hello: `none` (an original-protocol worker, no
hello) or a comma-separated list of capabilities.
"""
import json
import os
import select
import struct
import sys

log_path = sys.argv[1]
declared = sys.argv[2] if len(sys.argv) > 2 else "none"
inp = sys.stdin.buffer
out = sys.stdout.buffer


def read():
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    payload = inp.read(n)
    with open(log_path, "a") as f:
        f.write(payload.decode() + "\n")
    return json.loads(payload)


def write(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


# The environment the pool gave this worker, one JSON line per process.
ENV_KEYS = ["SNAKEPIT_PROTOCOL", "SNAKEPIT_CODEC", "SNAKEPIT_WORKER_ID", "SNAKEPIT_RUN_ID", "SNAKEPIT_HOST", "SNAKEPIT_MAX_FRAME_SIZE"]
with open(log_path + ".env", "a") as f:
    f.write(json.dumps(dict({k: os.environ.get(k) for k in ENV_KEYS}, pid=os.getpid())) + "\n")
if os.environ.get("SNAKEPIT_CODEC", "json") != "json":
    sys.exit("this worker speaks JSON only")

if declared != "none":
    caps = {"max_concurrency": 1}
    for c in declared.split(","):
        caps[c] = True
    write({"type": "hello", "protocol": 1, "pid": os.getpid(), "capabilities": caps})

while True:
    req = read()
    if req is None:
        break
    if req.get("type") not in (None, "request"):
        continue
    rid, command, args = req["id"], req["command"], req.get("args", {})
    if command == "ping":
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
    elif command == "no_result":
        write({"id": rid, "success": True})
    elif command == "overlap":
        # Was another request written while this one runs? A worker without
        # a hello must never be sent one.
        ready, _, _ = select.select([inp], [], [], args.get("watch_ms", 200) / 1000.0)
        write({"id": rid, "success": True, "result": {"overlap": bool(ready)}})
    elif command == "zero_id_failure":
        write({"id": 0, "success": False,
               "error": {"type": "ProtocolError", "message": "out of step"}})
    elif command == "late_chunk":
        write({"id": rid, "success": True, "result": "done"})
        write({"type": "chunk", "id": rid, "data": "too late"})
    elif command == "host":
        write({"type": "host_call", "id": 1, "request_id": rid,
               "function": args["function"], "args": {}})
        while True:
            reply = read()
            if reply is None:
                sys.exit(0)
            if reply.get("type") == "host_reply" and reply.get("id") == 1:
                break
        write({"id": rid, "success": True, "result": reply})
    else:
        write({"id": rid, "success": False,
               "error": {"type": "UnknownCommand", "message": "Unknown command: " + command}})
