"""A worker of the original protocol, written without the bridge, that can
misbehave on purpose. argv[1] picks the misbehaviour; `ok` behaves."""
import json
import os
import struct
import sys
import time

from raw_frames import read

mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
out = sys.stdout.buffer

if mode == "exit_at_once":
    sys.stderr.write("cannot start: missing model file\n")
    sys.exit(2)
if mode == "bad_import":
    import module_that_does_not_exist  # noqa: F401
if mode == "slow_init":
    time.sleep(30)



def write(obj=None, raw=None):
    data = raw if raw is not None else json.dumps(obj).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


if mode in ("host_flood", "host_flood_declared"):
    # host_calls declared only in the second mode
    write({"type": "hello", "protocol": 1, "pid": os.getpid(),
           "capabilities": {"max_concurrency": 1, "host_calls": mode == "host_flood_declared"}})

calls = 0
while True:
    req = read()
    if req is None:
        break
    if req["args"].get("initialization"):
        write({"id": req["id"], "success": True, "result": {"status": "ok", "pid": os.getpid()}})
        continue
    calls += 1
    rid = req["id"]
    if mode == "garbage":
        write(raw=b'{"id": %d, "success": tru' % rid)
    elif mode == "stray_stdout":
        out.write(b"hello from print()\n")
        out.flush()
        write({"id": rid, "success": True, "result": 1})
    elif mode == "oversize":
        out.write(struct.pack(">I", 0x7FFFFFFF))
        out.flush()
    elif mode == "unknown_id":
        write({"id": rid + 1000, "success": True, "result": 1})
    elif mode == "bad_utf8":
        write(raw=b'{"id": %d, "success": true, "result": "\xff\xfe"}' % rid)
    elif mode == "missing_success":
        write({"id": rid, "result": 1})
    elif mode == "truncated":
        out.write(struct.pack(">I", 100) + b'{"id":')
        out.flush()
        os._exit(0)
    elif mode == "close_stdout":
        os.close(1)
        time.sleep(30)
    elif mode in ("host_flood", "host_flood_declared"):
        # Many host calls, never reading a reply: a worker that floods.
        n = req["args"].get("n", 100000)
        frame = json.dumps({"type": "host_call", "id": 1, "request_id": rid,
                            "function": "echo", "args": {}}).encode()
        chunk = (struct.pack(">I", len(frame)) + frame) * 1000
        for _ in range(n // 1000):
            out.write(chunk)
        out.flush()
        time.sleep(30)
    elif mode == "close_stdin":
        # Closes its stdin, answers, and lives on: the next frame written
        # to it breaks the pipe.
        os.close(0)
        write({"id": rid, "success": True, "result": {"pid": os.getpid()}})
        time.sleep(300)
    elif mode == "string_error":
        write({"id": rid, "success": False, "error": "Unknown command: %s" % req["command"]})
    else:
        write({"id": rid, "success": True, "result": {"command": req["command"], "args": req["args"], "pid": os.getpid()}})
