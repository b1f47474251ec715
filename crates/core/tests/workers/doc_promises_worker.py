"""A worker without the bridge for `tests/doc_promises.rs`: what the docs
promise the pool does with frames a worker may send, and what it sends.

argv[1] is a file where every frame received is appended as one line, its
payload exactly as it came. argv[2] is what the hello declares: `none` (no
hello: an original-protocol worker) or a comma-separated list of
capabilities; `maxN` declares `max_concurrency` N (1 without it).
"""
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time

log_path = sys.argv[1]
declared = sys.argv[2] if len(sys.argv) > 2 else "none"
out = sys.stdout.buffer
if os.environ.get("SNAKEPIT_CODEC", "json") == "msgpack":
    import msgpack

    def encode(obj):
        return msgpack.packb(obj, use_bin_type=True)

    def decode(payload):
        return msgpack.unpackb(payload, raw=False)

    def logged(payload):
        return json.dumps(decode(payload))
else:
    def encode(obj):
        return json.dumps(obj, separators=(",", ":")).encode()

    def decode(payload):
        return json.loads(payload)

    def logged(payload):
        return payload.decode()


def read_exact(n):
    # Unbuffered: a frame not read yet stays in the pipe, where `waiting`
    # sees it (a buffered reader could take it in with the frame before).
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
    if payload is None:
        return None
    with open(log_path, "a") as f:
        f.write(logged(payload) + "\n")
    return decode(payload)


def write_raw(data):
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


def write(obj):
    write_raw(encode(obj))


def nested(depth):
    # `depth` arrays, one inside the other.
    return json.loads("[" * depth + "]" * depth)


def waiting(seconds):
    """Whether a frame arrived on stdin within `seconds` (left unread)."""
    ready, _, _ = select.select([0], [], [], seconds)
    return bool(ready)


if declared != "none":
    caps = {"max_concurrency": 1}
    for c in declared.split(","):
        if c.startswith("max"):
            caps["max_concurrency"] = int(c[3:])
        else:
            caps[c] = True
    write({"type": "hello", "protocol": 1, "pid": os.getpid(), "capabilities": caps})

stubborn = False  # ignores SIGTERM and the end of its stdin

while True:
    req = read()
    if req is None:
        while stubborn:
            time.sleep(1000)
        break
    if req.get("type") not in (None, "request"):
        continue
    rid, command, args = req["id"], req["command"], req.get("args", {})
    if command == "ping":
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
    elif command == "overlap":
        # Was another frame written while this call runs?
        write({"id": rid, "success": True,
               "result": {"overlap": waiting(args.get("watch_ms", 200) / 1000.0)}})
    elif command == "sleep":
        # Sleeps, watching stdin without reading it: did the pool write
        # anything (a cancel, another call) meanwhile?
        time.sleep(args["ms"] / 1000.0)
        seen = waiting(0)
        with open(log_path, "a") as f:
            f.write(json.dumps({"sleep_done": rid, "written_meanwhile": seen}) + "\n")
        write({"id": rid, "success": True,
               "result": {"pid": os.getpid(), "written_meanwhile": seen}})
    elif command == "wait_cancel":
        # Blocks until the pool sends a frame: a cancel, answered `Cancelled`.
        frame = read()
        if frame is None:
            sys.exit(0)
        if frame.get("type") == "cancel" and frame.get("id") == rid:
            write({"id": rid, "success": False,
                   "error": {"type": "Cancelled", "message": "cancelled"}})
        else:
            write({"id": rid, "success": False,
                   "error": {"type": "Unexpected", "message": json.dumps(frame)}})
    elif command == "trailing":
        # A whole reply, then one more value in the same frame.
        write_raw(encode({"id": rid, "success": True, "result": 1}) + encode(None))
    elif command == "zero_frame":
        write_raw(b"")
    elif command == "deep_chunk":
        write({"type": "chunk", "id": rid, "data": nested(args["depth"])})
        write({"id": rid, "success": True, "result": "done"})
    elif command == "deep_host_call":
        write({"type": "host_call", "id": 1, "request_id": rid,
               "function": "echo", "args": {"deep": nested(args["depth"])}})
        while True:
            reply = read()
            if reply is None:
                sys.exit(0)
            if reply.get("type") == "host_reply" and reply.get("id") == 1:
                break
        write({"id": rid, "success": True, "result": reply})
    elif command == "stderr":
        # Lines as a worker writes them: ended by \n, and by \r (a
        # progress bar).
        sys.stderr.write(args["text"])
        sys.stderr.flush()
        write({"id": rid, "success": True, "result": None})
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
    elif command == "stubborn":
        # From now on: SIGTERM ignored, the end of stdin too, and a child
        # of its own in its process group.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "1000"])
        stubborn = True
        time.sleep(args.get("hold_ms", 0) / 1000.0)  # long enough to be running at once
        write({"id": rid, "success": True, "result": {"pid": os.getpid(), "child": child.pid}})
    elif command == "escape":
        # A child in a session of its own: out of every group the pool kills.
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        write({"id": rid, "success": True, "result": child.pid})
    elif command == "escape_held":
        # The same, then held for `hold_ms`, so that calls at once go to
        # different workers; names the worker too.
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        time.sleep(args.get("hold_ms", 0) / 1000.0)
        write({"id": rid, "success": True, "result": {"child": child.pid, "worker": os.getpid()}})
    elif command == "pid":
        write({"id": rid, "success": True, "result": os.getpid()})
    elif command == "hold":
        time.sleep(args["ms"] / 1000.0)
        write({"id": rid, "success": True, "result": "held"})
    else:
        write({"id": rid, "success": False,
               "error": {"type": "UnknownCommand", "message": "Unknown command: " + command}})
