"""A worker written only from the original Elixir Snakepit's protocol.

It knows nothing of this project: no hello, no bridge library, no cancel
frames, no chunks. It reads 4-byte big-endian length-prefixed JSON
requests (`id`, `command`, `args`, `timestamp`) and writes replies the way
the original's Python bridge did: `json.dumps` with its default spacing and
ASCII escapes, keys `id`, `success`, `result` or `error` (a plain string),
`timestamp`. It is run as `python3 round5_upstream_worker.py --mode pool-worker`;
`ROUND5_INIT=not_ready` or `fails` makes its answer to the init ping
refuse (a result whose status is not "ok", or a failure).
"""

import json
import os
import select
import struct
import sys
import time
from datetime import datetime, timezone

START = time.time()
SEEN = []  # every request frame, as read
# Requests that found bytes of another frame already waiting in the pipe
# when their reply was about to be written: the pool wrote ahead to a
# worker that never said it could take that.
WRITTEN_AHEAD = []


def now_iso():
    return datetime.now(timezone.utc).isoformat()


def read_exactly(fd, n):
    # Unbuffered, so that what the pool has not yet written is not here
    # and what it has written stays in the pipe, where `select` sees it.
    out = b""
    while len(out) < n:
        part = os.read(fd, n - len(out))
        if not part:
            return None
        out += part
    return out


def read_frame(fd):
    header = read_exactly(fd, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    return read_exactly(fd, length)


def more_waiting(fd):
    return bool(select.select([fd], [], [], 0)[0])


def write_frame(stream, text):
    data = text.encode("utf-8")
    stream.write(struct.pack(">I", len(data)))
    stream.write(data)
    stream.flush()


INIT = os.environ.get("ROUND5_INIT", "ok")


def handle(command, args):
    """(success, result or error message, how to write the reply)."""
    if command == "ping" and args.get("initialization") and INIT == "not_ready":
        # The original pool waited for `status == "ok"`; this worker is not.
        return True, {"status": "error", "error": "model not loaded"}, "plain"
    if command == "ping" and args.get("initialization") and INIT == "fails":
        return False, "cannot initialise: model not loaded", "plain"
    if command == "ping":
        return True, {
            "status": "ok",
            "bridge_type": "generic",
            "uptime": time.time() - START,
            "requests_handled": len(SEEN),
            "timestamp": time.time(),
            "worker_id": args.get("worker_id", "unknown"),
            "echo": args,
            "python_version": sys.version.split()[0],
            "pid": os.getpid(),
        }, "plain"
    if command == "echo":
        return True, {"status": "ok", "echoed": args, "timestamp": time.time()}, "plain"
    if command == "compute":
        op = args.get("operation", "add")
        a, b = args.get("a", 0), args.get("b", 0)
        if op == "add":
            r = a + b
        elif op == "subtract":
            r = a - b
        elif op == "multiply":
            r = a * b
        elif op == "divide":
            if b == 0:
                return False, "Division by zero", "plain"
            r = a / b
        else:
            return False, "Unsupported operation: %s" % op, "plain"
        return True, {"status": "ok", "operation": op, "inputs": {"a": a, "b": b},
                      "result": r, "timestamp": time.time()}, "plain"
    if command == "seen":
        return True, {"requests": SEEN, "pid": os.getpid()}, "plain"
    if command == "written_ahead":
        return True, {"ids": WRITTEN_AHEAD, "pid": os.getpid()}, "plain"
    if command == "pid":
        return True, {"pid": os.getpid()}, "plain"
    if command == "sleep":
        time.sleep(float(args.get("seconds", 0)))
        return True, {"slept": args.get("seconds", 0), "pid": os.getpid()}, "plain"
    if command == "sorted_ok":
        return True, {"b": 2, "a": 1}, "sorted"
    if command == "sorted_error":
        return False, "sorted failure", "sorted"
    if command == "compact_ok":
        return True, args, "compact"
    if command == "nan":
        return True, {"value": float("nan")}, "plain"
    if command == "lone_surrogate":
        return True, {"name": b"caf\xff".decode("utf-8", "surrogateescape")}, "plain"
    if command == "crash":
        os._exit(int(args.get("code", 3)))
    return False, "Unknown command: %s" % command, "plain"


def main():
    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    sys.stderr.write("original-protocol worker started (pid %d): %r\n" % (os.getpid(), sys.argv[1:]))
    sys.stderr.flush()
    while True:
        payload = read_frame(stdin)
        if payload is None:
            break
        request = json.loads(payload)
        SEEN.append(request)
        rid = request.get("id")
        try:
            ok, value, style = handle(request.get("command"), request.get("args") or {})
        except Exception as e:  # the original answered any exception this way
            ok, value, style = False, str(e), "plain"
        reply = {"id": rid, "success": ok}
        if ok:
            reply["result"] = value
        else:
            reply["error"] = value
        reply["timestamp"] = now_iso()
        if more_waiting(stdin):
            WRITTEN_AHEAD.append(rid)
        if style == "sorted":
            text = json.dumps(reply, sort_keys=True)
        elif style == "compact":
            text = json.dumps(reply, separators=(",", ":"), ensure_ascii=False)
        else:
            text = json.dumps(reply)
        write_frame(stdout, text)


if __name__ == "__main__":
    main()
