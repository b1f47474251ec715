"""Red-team worker without the bridge, for crates/core/tests/redteam_faults.rs.

argv[1] picks the misbehaviour:
  stall          hello with max_concurrency 4; on `stall` it stops reading
                 its stdin for good (its pipe fills) and stays alive
  stall_escaped  the same, and its stall first forks a child that leaves its
                 group and holds its pipes (stdin too), reading nothing
  partial_hang   on `partial` it writes part of a frame and hangs, alive
  partial_die    on `partial` it forks a child that holds stdout (unless
                 args.child is false), writes part of a frame and exits
                 with status 5 (or kills itself with SIGKILL: args.how =
                 "kill", as the OOM killer would mid-write)
  close_later    on `close_later` it answers, then closes its stdout 300 ms
                 later and keeps running (reading calls, answering none)
  answer_exit    on `answer_exit` it writes its reply whole, then exits at
                 once (with a child holding its stdout if args.child)
  chatter        on `chatter` it forks a child that leaves its group and
                 writes a harmless frame to its stdout every 50 ms; the
                 worker exits with status 6 300 ms later
Every other command is answered with the worker's pid.
"""
import json
import os
import struct
import sys
import threading
import time

from raw_frames import read, write

mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
out = sys.stdout.buffer

if mode in ("stall", "stall_escaped"):
    write({"type": "hello", "protocol": 1, "pid": os.getpid(),
           "capabilities": {"max_concurrency": 4}})

while True:
    req = read()
    if req is None:
        break
    rid = req["id"]
    if req["args"].get("initialization") or req["command"] == "ping":
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
        continue
    cmd = req["command"]
    if mode == "stall" and cmd == "stall":
        time.sleep(300)
        os._exit(0)
    if mode == "stall_escaped" and cmd == "stall":
        # A child in a session of its own holds every pipe (stdin too) and
        # reads nothing; the worker stalls as well.
        if os.fork() == 0:
            os.setsid()
            path = req["args"]["pid_file"]
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(path + ".tmp", path)
            time.sleep(300)
            os._exit(0)
        time.sleep(300)
        os._exit(0)
    if mode == "partial_hang" and cmd == "partial":
        out.write(struct.pack(">I", 100) + b'{"id": %d, "succ' % rid)
        out.flush()
        time.sleep(300)
        os._exit(0)
    if mode == "partial_die" and cmd == "partial":
        if req["args"].get("child", True) and os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        out.write(struct.pack(">I", 100) + b'{"id": %d, "succ' % rid)
        out.flush()
        if req["args"].get("how") == "kill":
            sys.stderr.write("redteam: half a frame written, killing myself\n")
            sys.stderr.flush()
            os.kill(os.getpid(), 9)
        sys.stderr.write("redteam: half a frame written, exiting with 5\n")
        sys.stderr.flush()
        os._exit(5)
    if mode == "answer_exit" and cmd == "answer_exit":
        if req["args"].get("child") and os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        write({"id": rid, "success": True, "result": {"pid": os.getpid(), "token": req["args"].get("token")}})
        os._exit(0)
    if mode == "chatter" and cmd == "chatter":
        # A child in a session of its own (out of the worker's group) keeps
        # writing harmless frames (a second hello) to the worker's stdout,
        # every 50 ms, for 300 s; then the worker itself dies.
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            hello = json.dumps({"type": "hello", "protocol": 1, "pid": os.getpid(),
                                "capabilities": {}}).encode()
            for _ in range(6000):
                try:
                    out.write(struct.pack(">I", len(hello)) + hello)
                    out.flush()
                except OSError:
                    os._exit(0)
                time.sleep(0.05)
            os._exit(0)
        os.close(w)
        child = int(os.read(r, 64))
        with open(req["args"]["pid_file"] + ".tmp", "w") as f:
            f.write(str(child))
        os.rename(req["args"]["pid_file"] + ".tmp", req["args"]["pid_file"])
        time.sleep(0.3)
        sys.stderr.write("redteam: dying while my escaped child chatters\n")
        sys.stderr.flush()
        os._exit(6)
    if mode == "close_later" and cmd == "close_later":
        def _close():
            time.sleep(0.3)
            os.close(1)
        threading.Thread(target=_close, daemon=True).start()
    try:
        write({"id": rid, "success": True, "result": {"pid": os.getpid(), "command": cmd}})
    except OSError:
        # Its stdout is gone (close_later): it reads on, and answers nothing.
        sys.stderr.write("redteam: could not answer %s: stdout closed\n" % cmd)
        sys.stderr.flush()
