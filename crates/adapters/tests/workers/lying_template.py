"""A preload template that forks real workers but reports another pid as
each one's (LYING_PID, as JSON, or "self" for the template's own pid):
what a buggy third-party bridge might do. The real
pid goes to LYING_LOG. Not a template (no SNAKEPIT_PRELOAD): a generic
worker."""

import array
import json
import os
import socket
import sys

from snakepit_bridge import generic

if os.environ.get("SNAKEPIT_PRELOAD") != "1":
    generic.main()
    sys.exit(0)

lie = os.environ["LYING_PID"]
lie = os.getpid() if lie == "self" else json.loads(lie)
pool = socket.socket(fileno=0)
pool.send(json.dumps({"op": "ready", "pid": os.getpid(), "threads": 1}).encode())
while True:
    fds = array.array("i")
    msg, ancdata, _, _ = pool.recvmsg(65536, socket.CMSG_SPACE(3 * fds.itemsize))
    if not msg:
        sys.exit(0)
    for _, _, data in ancdata:
        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    request = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.environ.update(request.get("env", {}))
        del os.environ["SNAKEPIT_PRELOAD"]
        os.execv(sys.executable, [sys.executable, "-c", "from snakepit_bridge import generic; generic.main()"])
    for fd in fds:
        os.close(fd)
    with open(os.environ["LYING_LOG"], "a") as log:
        log.write(f"{pid}\n")
    pool.send(json.dumps({"op": "forked", "id": request["id"], "pid": lie}).encode())
