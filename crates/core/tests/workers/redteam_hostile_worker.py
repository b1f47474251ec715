"""A hostile worker, written without the bridge (JSON frames only), for
`redteam_hostile.rs`.

argv[1]: what it does before serving: `plain` (nothing), `hello` (a hello
whose capabilities are the JSON text of argv[3]), `early_reply` (a reply to
a request nobody sent, before reading anything).
argv[2]: who misbehaves: `all`, or `first` (only the first start of slot 1,
`<pool>_worker_1_1`; its replacements and the other slots behave).

A request's command picks the misbehaviour; `echo` and `sleep` behave.
Every good reply is `{"token": args.token, "pid": pid, "worker": id}`.
"""
import json
import os
import struct
import sys
import time

from raw_frames import read

setup = sys.argv[1] if len(sys.argv) > 1 else "plain"
who = sys.argv[2] if len(sys.argv) > 2 else "all"
out = sys.stdout.buffer
wid = os.environ.get("SNAKEPIT_WORKER_ID", "")
hostile = who == "all" or wid.endswith("_worker_1_1")


def raw(data):
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


def write(obj):
    raw(json.dumps(obj, separators=(",", ":")).encode())


def good(rid, args):
    return {"id": rid, "success": True,
            "result": {"token": args.get("token"), "pid": os.getpid(), "worker": wid}}


def nested(depth):
    v = 1
    for _ in range(depth):
        v = [v]
    return v


if setup == "hello":
    caps = sys.argv[3]
    raw(('{"type":"hello","protocol":1,"pid":%d,"capabilities":%s}' % (os.getpid(), caps)).encode())
elif setup == "early_reply":
    write({"id": 424242, "success": True, "result": {"status": "ok"}})

while True:
    req = read()
    if req is None:
        break
    rid = req["id"]
    args = req.get("args") or {}
    cmd = req["command"]
    if args.get("initialization") or args.get("health_check"):
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
        continue
    if cmd == "sleep":
        time.sleep(args.get("ms", 0) / 1000.0)
    # Before the misbehaviour: `wait_ms`; after it, without reading stdin:
    # `after_ms`.
    time.sleep(args.get("wait_ms", 0) / 1000.0)
    if not hostile or cmd in ("echo", "sleep"):
        write(good(rid, args))
    elif cmd == "zero_len":
        raw(b"")
    elif cmd == "success_str":
        raw(b'{"id":%d,"success":"true","result":1}' % rid)
    elif cmd == "success_int":
        raw(b'{"id":%d,"success":1,"result":1}' % rid)
    elif cmd == "id_float":
        raw(b'{"id":%d.0,"success":true,"result":1}' % rid)
    elif cmd == "dup_result":
        # Routed by its first bytes (the reader's fast path), then a field
        # given twice.
        raw(b'{"id":%d,"success":true,"result":1,"result":2}' % rid)
    elif cmd == "dup_success":
        raw(b'{"id":%d,"success":true,"result":1,"success":false}' % rid)
    elif cmd == "dup_id_slow":
        # The same fault, in a shape the fast path does not take.
        raw(b'{"success":true,"id":%d,"id":%d,"result":1}' % (rid, rid))
    elif cmd == "error_int":
        raw(b'{"id":%d,"success":false,"error":42}' % rid)
    elif cmd == "fast_path_garbage":
        raw(b'{"id":%d,"success":true,"result":tru' % rid)
    elif cmd == "unknown_type":
        raw(b'{"type":"gossip","id":%d}' % rid)
    elif cmd == "reply_twice":
        write(good(rid, args))
        write(good(rid, args))
    elif cmd == "reply_next_id":
        # A reply for an id this worker was never given (most likely the
        # call that the pool sent to another worker next), then its own.
        write({"id": rid + 1, "success": True, "result": {"token": "forged", "pid": os.getpid()}})
        write(good(rid, args))
    elif cmd == "stdout_after":
        write(good(rid, args))
        out.write(b"done\n")
        out.flush()
    elif cmd == "drip":
        data = json.dumps(good(rid, args), separators=(",", ":")).encode()
        frame = struct.pack(">I", len(data)) + data
        delay = args.get("delay_ms", 100) / 1000.0
        for i in range(len(frame)):
            out.write(frame[i:i + 1])
            out.flush()
            time.sleep(delay)
    elif cmd == "half_header":
        out.write(b"\x00\x00")
        out.flush()
        time.sleep(300)
    elif cmd == "chunk_unknown":
        write({"type": "chunk", "id": rid + 12345, "data": 1})
        write(good(rid, args))
    elif cmd == "deep_chunk_then_more":
        write({"type": "chunk", "id": rid, "data": {"n": 0}})
        raw(('{"type":"chunk","id":%d,"data":%s}' % (rid, json.dumps(nested(200)))).encode())
        write({"type": "chunk", "id": rid, "data": {"n": 2}})
        write(good(rid, args))
    elif cmd == "late_hello_host_call":
        # A hello that is not the first frame, declaring host calls, then a
        # host call: the hello is ignored, so the host call is refused.
        write({"type": "hello", "protocol": 1, "pid": os.getpid(),
               "capabilities": {"max_concurrency": 8, "host_calls": True}})
        write({"type": "host_call", "id": 1, "request_id": rid, "function": "f", "args": {}})
        time.sleep(300)
    else:
        write(good(rid, args))
    time.sleep(args.get("after_ms", 0) / 1000.0)
