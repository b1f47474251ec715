"""The protocol's framing, for test workers written without the bridge:
4-byte big-endian length, then a JSON payload, on stdin and stdout."""
import json
import struct
import sys

inp = sys.stdin.buffer
out = sys.stdout.buffer


def read():
    """The next frame's payload, decoded; None at the end of input."""
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(inp.read(n))


def write(obj):
    """Sends `obj` as one frame."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()
