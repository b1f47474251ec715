"""A worker of the pool's protocol written without the bridge, for
crates/core/tests/outside_round5_processes.rs.

argv[1] picks what it does besides answering `pid` calls:

- `leave_group`: before its handshake it starts a helper child, puts the
  helper in a process group of its own and moves itself into that group,
  so the group it was started in (led by its own pid) is empty; it ignores
  SIGTERM and lives on at the end of its stdin.
- `ok`: nothing else; exits at the end of its stdin.
"""
import json
import os
import signal
import struct
import sys
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
inp = sys.stdin.buffer
out = sys.stdout.buffer


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = inp.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def write(obj):
    data = json.dumps(obj).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


helper = None
if mode == "leave_group":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    helper = os.fork()
    if helper == 0:
        # The helper: sleeps, never touches the protocol pipes.
        os.closerange(0, 3)
        while True:
            time.sleep(60)
    os.setpgid(helper, helper)
    os.setpgid(0, helper)

while True:
    head = read_exact(4)
    if head is None:
        break
    req = json.loads(read_exact(struct.unpack(">I", head)[0]))
    write({"id": req["id"], "success": True,
           "result": {"status": "ok", "pid": os.getpid(),
                      "pgid": os.getpgid(0), "helper": helper}})

if mode == "leave_group":
    # Stubborn: the end of its stdin does not end it.
    while True:
        time.sleep(60)
