"""A raw protocol worker (no bridge) for outside_pipeline_round4.rs.

It declares `pipeline` and runs one call at a time, in the order the calls
were written. Before it starts a request it reads whatever else is already
in its stdin: a cancel for a request still waiting drops that request,
answered Cancelled and never run. Each request it runs appends its token
to the file named by R4_LOG (one line: `ran <token>`), so a test can tell
which calls ran and how often.

Commands (each replies {token, pid, ran: requests run so far}, unless said):

- `echo`: replies at once.
- `sleep` {ms}: sleeps, then replies.
- `reverse` {k}: reads the next k requests (written ahead), answers them
  in reverse order (each with its own token, marked `reversed`), then
  answers itself: replies out of order.
- `twice`: replies twice to its own id (a reply nobody asked for).
- `stranger`: replies to an id the pool never sent, then to its own.
  After either, it runs the requests it has read before it flushes what
  it wrote: their replies lie behind the stray one.
- `die_mid_reply` {ms}: sleeps, writes half of its reply, exits 7.
- `read_ahead_exit` {ms}: sleeps, reads every frame waiting in its stdin
  (the calls written ahead), logs `read <token>` for each, exits 5
  without answering any.
- `close_stdout_go_on` {ms}: sleeps, closes its stdout, then goes on
  running the requests it reads (logged, unanswered) until its stdin
  ends.
"""
import json
import os
import select
import struct
import sys
import time
from collections import deque

IN = 0
out = sys.stdout.buffer
LOG = os.environ.get("R4_LOG")
buf = bytearray()
backlog = deque()
ran = 0
# After a stray reply: replies are held until the calls already read have
# run, then written together (so they all lie behind the stray one).
held = False


def log(line):
    if LOG:
        with open(LOG, "a") as f:
            f.write(line + "\n")


def write(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    out.write(struct.pack(">I", len(data)) + data)
    if not held:
        out.flush()


def split():
    """Frames whole in `buf`, taken out of it."""
    frames = []
    while len(buf) >= 4:
        (n,) = struct.unpack(">I", bytes(buf[:4]))
        if len(buf) < 4 + n:
            break
        frames.append(json.loads(bytes(buf[4:4 + n])))
        del buf[:4 + n]
    return frames


def take(frames):
    """Requests join the backlog; a cancel drops the request it names."""
    for f in frames:
        if f.get("type") == "cancel":
            for r in list(backlog):
                if r.get("id") == f.get("id"):
                    backlog.remove(r)
                    write({"id": r["id"], "success": False,
                           "error": {"type": "Cancelled", "message": "dropped unrun"}})
        elif f.get("type") in (None, "request"):
            backlog.append(f)


def read_waiting():
    """Reads what is already in stdin, without blocking."""
    while select.select([IN], [], [], 0)[0]:
        data = os.read(IN, 1 << 16)
        if not data:
            return False
        buf.extend(data)
        take(split())
    return True


def read_blocking():
    data = os.read(IN, 1 << 16)
    if not data:
        return False
    buf.extend(data)
    take(split())
    return True


def next_request():
    global held
    if held and not backlog:
        held = False
        out.flush()
    while True:
        if not read_waiting():
            if not backlog:
                return None
        if backlog:
            return backlog.popleft()
        if not read_blocking() and not backlog:
            return None


def reply(req, **extra):
    args = req.get("args") or {}
    result = {"token": args.get("token"), "pid": os.getpid(), "ran": ran}
    result.update(extra)
    write({"id": req["id"], "success": True, "result": result})


write({"type": "hello", "protocol": 1, "pid": os.getpid(),
       "capabilities": {"max_concurrency": 1, "pipeline": True}})

while True:
    req = next_request()
    if req is None:
        break
    rid = req["id"]
    args = req.get("args") or {}
    cmd = req.get("command")
    if args.get("initialization") or args.get("health_check"):
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
        continue
    ran += 1
    log("ran %s" % args.get("token"))
    if cmd == "sleep":
        time.sleep(args.get("ms", 0) / 1000)
        reply(req)
    elif cmd == "reverse":
        while len(backlog) < args.get("k", 1):
            if not read_blocking():
                break
        behind = [backlog.popleft() for _ in range(min(args.get("k", 1), len(backlog)))]
        for other in reversed(behind):
            ran += 1
            log("ran %s" % (other.get("args") or {}).get("token"))
            reply(other, reversed=True)
        reply(req)
    elif cmd == "twice":
        reply(req)
        read_waiting()
        held = True
        reply(req)
    elif cmd == "stranger":
        read_waiting()
        held = True
        write({"id": rid + 1000000000, "success": True, "result": {"token": "stranger"}})
        reply(req)
    elif cmd == "die_mid_reply":
        time.sleep(args.get("ms", 0) / 1000)
        data = json.dumps({"id": rid, "success": True,
                           "result": {"token": args.get("token"), "pad": "x" * 200}}).encode()
        out.write(struct.pack(">I", len(data)) + data[: len(data) // 2])
        out.flush()
        os._exit(7)
    elif cmd == "close_stdout_go_on":
        time.sleep(args.get("ms", 0) / 1000)
        os.close(1)
        while True:
            other = next_request()
            if other is None:
                os._exit(0)
            log("ran %s" % (other.get("args") or {}).get("token"))
    elif cmd == "read_ahead_exit":
        time.sleep(args.get("ms", 0) / 1000)
        read_waiting()
        for r in backlog:
            log("read %s" % (r.get("args") or {}).get("token"))
        os._exit(5)
    else:
        reply(req)
