"""A hostile worker speaking MessagePack frames, without the bridge, for
`redteam_hostile.rs`. The request's command picks the misbehaviour; `echo`
behaves."""
import os
import struct
import sys

import msgpack

inp = sys.stdin.buffer
out = sys.stdout.buffer


def read():
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return msgpack.unpackb(inp.read(n), raw=False)


def raw(data):
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


def write(obj):
    raw(msgpack.packb(obj, use_bin_type=True))


def head(rid, success, n):
    """A map of `n` entries starting `id`, `success`, as the bridges write."""
    return bytes([0x80 | n]) + msgpack.packb("id") + msgpack.packb(rid) \
        + msgpack.packb("success") + msgpack.packb(success)


while True:
    req = read()
    if req is None:
        break
    rid = req["id"]
    args = req.get("args") or {}
    cmd = req["command"]
    if args.get("initialization") or cmd == "echo":
        write({"id": rid, "success": True,
               "result": {"status": "ok", "pid": os.getpid(), "token": args.get("token")}})
    elif cmd == "bad_utf8_result":
        # A str8 whose bytes are not UTF-8.
        raw(head(rid, True, 3) + msgpack.packb("result") + b"\xa2\xff\xfe")
    elif cmd == "bad_utf8_error":
        raw(head(rid, False, 3) + msgpack.packb("error") + b"\xa2\xff\xfe")
    elif cmd == "error_int":
        raw(head(rid, False, 3) + msgpack.packb("error") + msgpack.packb(42))
    elif cmd == "dup_result":
        raw(head(rid, True, 4) + msgpack.packb("result") + msgpack.packb(1)
            + msgpack.packb("result") + msgpack.packb(2))
    elif cmd == "truncated_map":
        # Says 3 entries, holds 2.
        raw(head(rid, True, 3))
    else:
        write({"id": rid, "success": True, "result": None})
