"""A preload template written without the bridge, for
crates/core/tests/outside_round6_processes.rs.

Started with SNAKEPIT_PRELOAD=1, its stdin is the pool's SOCK_SEQPACKET
socket (docs/preload.md, "The template protocol"). It says `ready`, then
serves each fork request for real: the child takes the three descriptors
as its stdin, stdout and stderr, sets the request's variables and runs
round6_proc_worker.py (a bridge worker started directly). But the pid it
reports in `forked` is $R6_REPORTED_PID (a decimal number), not the
child's. The child's pid is written to $R6_CHILD_FILE.
"""
import array
import json
import os
import socket
import sys

sock = socket.socket(fileno=0)
here = os.path.dirname(os.path.abspath(__file__))
worker = os.path.join(here, "round6_proc_worker.py")


def send(message):
    sock.send(json.dumps(message).encode())


send({"op": "ready", "pid": os.getpid(), "threads": 1})
while True:
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(3 * fds.itemsize))
    if not data:
        os._exit(0)
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    request = json.loads(data)
    child = os.fork()
    if child == 0:
        try:
            os.setpgid(0, 0)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            env = dict(os.environ)
            env.update(request.get("env") or {})
            env.pop("SNAKEPIT_PRELOAD", None)
            os.execve(sys.executable, [sys.executable, worker], env)
        finally:
            os._exit(1)
    for fd in fds:
        os.close(fd)
    with open(os.environ["R6_CHILD_FILE"] + ".tmp", "w") as f:
        f.write(str(child))
    os.rename(os.environ["R6_CHILD_FILE"] + ".tmp", os.environ["R6_CHILD_FILE"])
    send({"op": "forked", "id": request["id"], "pid": int(os.environ["R6_REPORTED_PID"])})
