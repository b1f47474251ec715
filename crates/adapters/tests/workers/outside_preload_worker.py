"""A worker for crates/adapters/tests/outside_preload.rs.

Started by the pool as a preload template (``SNAKEPIT_PRELOAD=1``) with
``OUTSIDE_RAW`` set, it is a template of its own that implements
docs/preload.md's protocol by hand and writes what the pool sent it to
``OUTSIDE_LOG`` (one JSON object a line), so that a test can check the
pool's side of the protocol. ``OUTSIDE_RAW`` says how it answers fork
requests:

- ``serve``: forks; the child takes the three descriptors as 0, 1 and 2,
  applies ``env``, drops ``SNAKEPIT_PRELOAD`` and runs this script again as
  a worker (exec); the template reaps its children and reports ``exited``;
- ``fail``: answers ``fork_failed`` with a reason of its own;
- ``serve`` with ``OUTSIDE_MUTE_AFTER=N``: serves N requests, then reads
  the next ones and never answers (a template blocked in its script);
- ``reaped``: forks a child that exits with status 3 at once, reaps it, then
  sends ``forked`` (the pid of a child already reaped) and ``exited``.

Otherwise it is an ordinary worker of the bundled bridge (preloaded by the
bridge's own template, or started directly) with the commands below.
"""

import array
import ctypes
import fcntl
import json
import os
import select
import socket
import stat
import sys
import time


def raw_template(mode):
    log_path = os.environ["OUTSIDE_LOG"]

    def note(obj):
        with open(log_path, "a") as f:
            f.write(json.dumps(obj) + "\n")

    pool = socket.socket(fileno=0)
    libc = ctypes.CDLL(None, use_errno=True)
    pdeathsig = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(pdeathsig), 0, 0, 0)  # PR_GET_PDEATHSIG
    note(
        {
            "kind": "start",
            "pid": os.getpid(),
            "family": int(pool.family),
            "type": int(pool.type),
            "pdeathsig": pdeathsig.value,
            "preload": os.environ.get("SNAKEPIT_PRELOAD"),
            "mark": os.environ.get("OUTSIDE_MARK"),
            "run_id": os.environ.get("SNAKEPIT_RUN_ID"),
            "argv": sys.argv,
        }
    )
    print("outside-template says hello on stdout", flush=True)
    print("outside-template says hello on stderr", file=sys.stderr, flush=True)

    def send(obj):
        pool.send(json.dumps(obj).encode())

    send({"op": "ready", "pid": os.getpid(), "threads": 1})
    children = set()
    served = 0
    mute_after = int(os.environ.get("OUTSIDE_MUTE_AFTER", "-1"))
    while True:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                send({"op": "exited", "pid": pid, "status": status})
        readable, _, _ = select.select([pool], [], [], 0.1)
        if not readable:
            continue
        fds = array.array("i")
        msg, ancdata, flags, _ = pool.recvmsg(
            128 * 1024, socket.CMSG_SPACE(16 * fds.itemsize)
        )
        if not msg:
            sys.exit(0)
        for _, _, data in ancdata:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        described = []
        for fd in fds:
            st = os.fstat(fd)
            access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
            described.append(
                {
                    "fifo": stat.S_ISFIFO(st.st_mode),
                    "mode": {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}[access],
                    "ino": st.st_ino,
                }
            )
        note(
            {
                "kind": "request",
                "len": len(msg),
                "text": msg.decode("utf-8"),
                "truncated": bool(flags & socket.MSG_TRUNC),
                "fds": described,
            }
        )
        request = json.loads(msg)
        if served == mute_after:
            for fd in fds:
                os.close(fd)
            continue
        if mode == "fail":
            for fd in fds:
                os.close(fd)
            send(
                {
                    "op": "fork_failed",
                    "id": request["id"],
                    "error": "OUTSIDE-REFUSED: no room for another worker",
                }
            )
            continue
        served += 1
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                os.close(fd)
            os.environ.update(request.get("env", {}))
            os.environ.pop("SNAKEPIT_PRELOAD", None)
            if mode == "reaped":
                os._exit(3)
            os.execv(sys.executable, [sys.executable, "-u", __file__] + sys.argv[1:])
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        if mode == "reaped":
            _, status = os.waitpid(pid, 0)
            send({"op": "forked", "id": request["id"], "pid": pid})
            send({"op": "exited", "pid": pid, "status": status})
            continue
        children.add(pid)
        send({"op": "forked", "id": request["id"], "pid": pid})


if os.environ.get("SNAKEPIT_PRELOAD") == "1" and os.environ.get("OUTSIDE_RAW"):
    raw_template(os.environ["OUTSIDE_RAW"])
    sys.exit(0)

from snakepit_bridge import Worker  # noqa: E402

LOADED_IN = os.getpid()
worker = Worker()


@worker.command
def whoami(args):
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "loaded_in": LOADED_IN,
        "argv": sys.argv,
        "worker_id": os.environ.get("SNAKEPIT_WORKER_ID"),
        "preload": os.environ.get("SNAKEPIT_PRELOAD"),
        "mark": os.environ.get("OUTSIDE_MARK"),
        "big": len(os.environ.get("OUTSIDE_BIG", "")),
        # The bytes of OUTSIDE_BYTES as this process sees them (not
        # /proc/<pid>/environ, which shows a forked process the environment
        # its template was started with).
        "bytes": os.environb[b"OUTSIDE_BYTES"].hex() if b"OUTSIDE_BYTES" in os.environb else None,
    }


@worker.command
def sleep(args):
    if args.get("marker"):
        open(args["marker"], "w").close()
    time.sleep(args["ms"] / 1000)
    return whoami(args)


worker.run()
