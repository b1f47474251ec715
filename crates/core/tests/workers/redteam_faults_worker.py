"""Red-team worker (bridge-based) for crates/core/tests/redteam_faults.rs:
workers whose children hold their pipes, that fork and exit, and that die
soon after starting (for the restart back-off).
"""
import os
import signal
import sys
import time

import snakepit_bridge

# Each start is logged (time, pid) when REDTEAM_START_LOG is set.
if os.environ.get("REDTEAM_START_LOG"):
    with open(os.environ["REDTEAM_START_LOG"], "a") as f:
        f.write("%f %d\n" % (time.time(), os.getpid()))

# Dies this long after starting (the handshake succeeds first) while the
# flag file exists: a crash loop.
_flag = os.environ.get("REDTEAM_DIE_SOON_IF_EXISTS")
if _flag and os.path.exists(_flag):
    import threading

    def _die():
        sys.stderr.write("redteam: dying soon after start\n")
        sys.stderr.flush()
        os._exit(9)

    threading.Timer(float(os.environ.get("REDTEAM_DIE_AFTER", "0.2")), _die).start()

# Hangs before the handshake while the flag file exists (a slow start).
_slow = os.environ.get("REDTEAM_SLOW_START_IF_EXISTS")
if _slow and os.path.exists(_slow):
    if os.environ.get("REDTEAM_SLOW_START_PID_FILE"):
        _path = os.environ["REDTEAM_SLOW_START_PID_FILE"]
        with open(_path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(_path + ".tmp", _path)
    time.sleep(300)

# Starts a helper process at import (it inherits stdout and stderr; in a
# session of its own with "escaped"), writes its pid, then fails to load.
_helper = os.environ.get("REDTEAM_HELPER_THEN_FAIL")
if _helper:
    import subprocess

    h = subprocess.Popen(["sleep", "300"], start_new_session=(_helper == "escaped"))
    _path = os.environ["REDTEAM_HELPER_PID_FILE"]
    with open(_path + ".tmp", "w") as f:
        f.write(str(h.pid))
    os.rename(_path + ".tmp", _path)
    raise RuntimeError("redteam: the model failed to load after starting a helper")

# Forks at import and the parent exits: the child goes on as the worker.
if os.environ.get("REDTEAM_FORK_AND_EXIT_AT_START"):
    if os.fork() != 0:
        os._exit(0)

worker = snakepit_bridge.Worker()


def _report_pid(w, pid):
    os.write(w, str(pid).encode())
    os.close(w)


def _read_pid(r):
    data = b""
    while True:
        chunk = os.read(r, 64)
        if not chunk:
            break
        data += chunk
    os.close(r)
    return int(data)


@worker.command("pid")
def pid(args, ctx):
    return {"pid": os.getpid()}


@worker.command("sleep")
def sleep(args, ctx):
    if args.get("marker"):
        with open(args["marker"], "w") as f:
            f.write("started")
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"pid": os.getpid(), "token": args.get("token")}


@worker.command("stuck")
def stuck(args, ctx):
    """Blocks SIGINT, then sleeps: a call that will not end when cancelled."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    time.sleep(args.get("ms", 60000) / 1000.0)
    return {"pid": os.getpid()}


@worker.command("hold_pipes")
def hold_pipes(args, ctx):
    """Starts a process that holds the worker's pipes open and sleeps.

    how = "child": a forked child holding every descriptor;
          "stderr_only": a forked child holding only stderr;
          "grandchild": a grandchild (its parent exited) holding every
                        descriptor, still in the worker's process group;
          "escaped": a forked child in a session of its own (out of the
                     group) holding every descriptor.
    """
    how = args.get("how", "child")
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        try:
            if how == "stderr_only":
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                keep = {0, 1, 2, w}
                for fd in range(3, 1024):
                    if fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            if how == "escaped":
                os.setsid()
            if how == "grandchild":
                if os.fork() != 0:
                    os._exit(0)
            _report_pid(w, os.getpid())
            time.sleep(300)
        finally:
            os._exit(0)
    os.close(w)
    holder = _read_pid(r)
    if how == "grandchild":
        os.waitpid(child, 0)
    return {"pid": os.getpid(), "holder": holder}


@worker.command("exit")
def exit_(args, ctx):
    sys.stderr.write("redteam: exiting with %d on purpose\n" % args.get("code", 3))
    sys.stderr.flush()
    os._exit(args.get("code", 3))


@worker.command("fork_and_exit")
def fork_and_exit(args, ctx):
    """The parent exits; the forked child goes on with the call and would
    answer it after `ms`."""
    if args.get("pid_file"):
        path = args["pid_file"]
    else:
        path = None
    child = os.fork()
    if child != 0:
        if path:
            with open(path + ".tmp", "w") as f:
                f.write(str(child))
            os.rename(path + ".tmp", path)
        os._exit(0)
    time.sleep(args.get("ms", 2000) / 1000.0)
    return {"pid": os.getpid(), "answered_by": "forked child"}


@worker.command("host")
def host(args, ctx):
    """Calls host function `function`, after writing `marker` (the call has
    started)."""
    if args.get("marker"):
        with open(args["marker"], "w") as f:
            f.write("started")
    return ctx.call_host(args["function"], args.get("args", {}))


@worker.command("daemonize")
def daemonize(args, ctx):
    """Daemonizes the way `python-daemon` or a double fork does: fork, the
    child leaves the group with setsid, the parent exits. The child goes on
    serving the worker's pipes (this call and the next ones)."""
    r, w = os.pipe()
    child = os.fork()
    if child != 0:
        # Exits once the child has left the group (as a double fork that
        # waits for its daemon would).
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.setsid()
    os.write(w, b"x")
    os.close(w)
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"pid": os.getpid(), "daemon": True}


if __name__ == "__main__":
    worker.run()
