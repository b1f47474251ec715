"""A worker without the bridge for crates/core/tests/outside_reliability.rs.

argv[1] picks what it does, argv[2] (when given) is a log file it appends
one line to per thing that happens (`<what> <pid> [<detail>]`).

- `nan`: a call with `{"nan": true}` is answered with a JSON frame whose
  result is the literal `NaN` (what `json.dumps` writes by default); any
  other call gets `{"pid": <pid>}`.
- `chunk_typed`: every call is answered with a frame whose `type` says
  `chunk` but that has `success` (protocol.md section 5: a response
  whatever its type says).
- `late`: declares `cancel` and runs one call at a time, but never stops a
  handler: `slow` sleeps `ms` whatever comes, then replies. A reader
  thread logs each frame as it arrives (`recv <pid> <command or type>:<id>`)
  and the handler logs each reply just before writing it (`sent <pid> <id>`), so
  the log shows whether a call reached the worker before the one in front
  of it had replied.
- `group`: `child` starts a child in the worker's process group that logs
  `child-term` on SIGTERM and keeps running; the worker ignores the end of
  its stdin and logs `worker-term` on SIGTERM, then exits 0.
"""
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time

mode = sys.argv[1]
log_path = sys.argv[2] if len(sys.argv) > 2 else None
inp = sys.stdin.buffer
out = sys.stdout.buffer
lock = threading.Lock()


def read_log():
    try:
        with open(log_path) as f:
            return f.read()
    except (OSError, TypeError):
        return ""


def log(*what):
    if log_path:
        with lock, open(log_path, "a") as f:
            f.write(" ".join(str(w) for w in what) + "\n")


def read():
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(inp.read(n))


def write_raw(data):
    with lock:
        out.write(struct.pack(">I", len(data)) + data)
        out.flush()


def write(obj):
    write_raw(json.dumps(obj, separators=(",", ":")).encode())


def ok(rid, result):
    write({"id": rid, "success": True, "result": result})


pid = os.getpid()

if mode == "group":
    def on_term(_signum, _frame):
        log("worker-term", pid)
        # The same SIGTERM went to the child (one group): give it time to
        # log it on a loaded machine before this exit makes the pool kill
        # what is left of the group.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "child-term" not in read_log():
            time.sleep(0.01)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)

caps = {"max_concurrency": 1}
if mode == "late":
    caps["cancel"] = True
write({"type": "hello", "protocol": 1, "pid": pid, "capabilities": caps})

CHILD = (
    "import os, signal, sys, time\n"
    "log = sys.argv[1]\n"
    "def on_term(s, f):\n"
    "    with open(log, 'a') as fh:\n"
    "        fh.write('child-term %d\\n' % os.getpid())\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
    "with open(log, 'a') as fh:\n"
    "    fh.write('child-ready %d\\n' % os.getpid())\n"
    "while True:\n"
    "    time.sleep(1)\n"
)


def serve(req):
    rid = req["id"]
    args = req.get("args") or {}
    if args.get("initialization") or req.get("command") == "ping":
        return ok(rid, {"status": "ok", "pid": pid})
    command = req.get("command")
    if mode == "nan":
        if args.get("nan"):
            return write_raw(b'{"id":%d,"success":true,"result":NaN}' % rid)
        return ok(rid, {"pid": pid})
    if mode == "chunk_typed":
        return write({"type": "chunk", "id": rid, "success": True,
                      "result": {"pid": pid, "token": args.get("token")}})
    if mode == "late":
        if command == "slow":
            time.sleep(args.get("ms", 0) / 1000.0)
        # Logged before the reply is written: a call the pool sends once it
        # has the reply is logged after this line.
        log("sent", pid, rid)
        return ok(rid, {"pid": pid, "token": args.get("token")})
    if mode == "group":
        if command == "child":
            child = subprocess.Popen([sys.executable, "-c", CHILD, log_path])
            return ok(rid, {"pid": pid, "child_pid": child.pid})
        return ok(rid, {"pid": pid})
    return ok(rid, {"pid": pid})


if mode == "late":
    # Frames are read as they come; requests are run one at a time, in order.
    todo = queue.Queue()

    def handler():
        while True:
            req = todo.get()
            if req is None:
                os._exit(0)
            serve(req)

    threading.Thread(target=handler, daemon=True).start()
    while True:
        msg = read()
        if msg is None:
            todo.put(None)
            time.sleep(30)
            break
        kind = msg.get("type") or "request"
        if kind == "request":
            log("recv", pid, "%s:%d" % (msg.get("command"), msg["id"]))
            todo.put(msg)
        else:
            log("recv", pid, "%s:%d" % (kind, msg.get("id", 0)))
    sys.exit(0)

while True:
    msg = read()
    if msg is None:
        break
    if (msg.get("type") or "request") == "request":
        serve(msg)

if mode == "group":
    # Ignores the end of its stdin: only a signal ends it.
    while True:
        time.sleep(1)
sys.exit(0)
