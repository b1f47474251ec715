"""bridges/python/README.md, from the handler author's side: the ways to
register a handler, the two modes (OPR_MODE: "sync", only plain functions;
"async", with async def handlers; "threads", plain functions only but
Worker(max_concurrency=3)), ctx.worker and ctx.logger, raising Cancelled,
cancellation in asyncio mode, the session helpers, failed host calls,
emitting from what a handler leaves behind, and the order of what handlers
print (tests/outside_python_readme.rs)."""

import asyncio
import json
import os
import sys
import threading
import time

import snakepit_bridge

MODE = os.environ.get("OPR_MODE", "sync")

if MODE == "threads":
    worker = snakepit_bridge.Worker(max_concurrency=3)
else:
    worker = snakepit_bridge.Worker()


def where(form):
    return {
        "form": form,
        "main_thread": threading.current_thread() is threading.main_thread(),
        "pid": os.getpid(),
    }


def write(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


# --- registration forms -------------------------------------------------------


@worker.command
def bare(args):
    return where("bare")


@worker.command("named_ctx")
def some_other_name(args, ctx):
    return dict(where("named_ctx"), command=ctx.command)


def registered(args, ctx):
    return dict(where("registered"), command=ctx.command)


worker.register("registered_name", registered)


@worker.command("whoami")
def whoami(args, ctx):
    ctx.logger.info("whoami %s", args["token"])
    return {
        "worker_is_the_worker": ctx.worker is worker,
        "worker_id": ctx.worker_id,
        "workers_id": ctx.worker.worker_id,
        "request_id": ctx.request_id,
        "pid": os.getpid(),
    }


@worker.command("raise_cancelled")
def raise_cancelled(args, ctx):
    ctx.check_cancelled()  # not cancelled: returns
    raise snakepit_bridge.Cancelled("given up by the handler")


# --- the time the caller still waits --------------------------------------------


@worker.command("nap")
def nap(args):
    time.sleep(args["ms"] / 1000.0)
    return {"slept": args["ms"]}


@worker.command("time_left")
def time_left(args, ctx):
    return {"timeout_ms": ctx.timeout_ms, "started_at": time.time()}


# --- concurrency: every one of n calls must be running at once ---------------

_barriers = {}
_barriers_lock = threading.Lock()


@worker.command("together")
def together(args):
    with _barriers_lock:
        barrier = _barriers.setdefault(args["key"], threading.Barrier(args["n"]))
    barrier.wait(timeout=20)  # BrokenBarrierError unless n run at once
    return where("together")


# --- cancellation of a plain function that polls -------------------------------


@worker.command("poll_cancel")
def poll_cancel(args, ctx):
    polls = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < 20:
            ctx.check_cancelled()
            polls += 1
            time.sleep(0.01)
        return {"finished": True}
    finally:
        write(args["notes"], json.dumps({
            "cancelled": ctx.cancelled,
            "main_thread": threading.current_thread() is threading.main_thread(),
            "ran_for": time.monotonic() - start,
            "polls": polls,
        }))


# --- session and host calls from a plain function ----------------------------


@worker.command("session_plain")
def session_plain(args, ctx):
    key, s = args["key"], ctx.session
    out = {"before": s.get(key)}
    s.set(key, args["value"])
    out["after"] = s.get(key)
    out["deleted"] = s.delete(key)
    out["deleted_again"] = s.delete(key)
    out["gone"] = s.get(key)
    return out


@worker.command("host_failures")
def host_failures(args, ctx):
    out = {}
    for function in args["functions"]:
        try:
            out[function] = ["ok", ctx.call_host(function, {})]
        except snakepit_bridge.HostCallError as e:
            out[function] = [type(e).__name__, e.type, e.message]
    return out


@worker.command("ask")
def ask(args, ctx):
    try:
        answer = ctx.call_host(args["function"], args["with"])
    except BaseException as e:
        if "notes" in args:
            write(args["notes"], json.dumps({"raised": type(e).__name__}))
        raise
    return {"answer": answer, "pid": os.getpid()}


if MODE == "async":

    @worker.command("ask_async")
    async def ask_async(args, ctx):
        try:
            answer = await ctx.acall_host(args["function"], args["with"])
        except BaseException as e:
            if "notes" in args:
                write(args["notes"], json.dumps({"raised": type(e).__name__}))
            raise
        return {"answer": answer, "pid": os.getpid()}


# --- what a thread left behind emits ---------------------------------------------


@worker.command("leave_thread")
def leave_thread(args, ctx):
    first = threading.Event()

    def keep_emitting():
        results = []
        end = time.monotonic() + args["secs"]
        while time.monotonic() < end:
            results.append(ctx.emit(len(results)))
            first.set()
            time.sleep(0.02)
        write(args["notes"], json.dumps(results))

    threading.Thread(target=keep_emitting, daemon=True).start()
    first.wait(10)
    return {"left": True}


# --- chunks a codec cannot carry, messages no codec can carry ---------------


@worker.command("emit_non_finite")
def emit_non_finite(args, ctx):
    caught = []
    for value in (float("nan"), float("inf")):
        try:
            caught.append(["sent", ctx.emit(value)])
        except Exception as e:  # noqa: BLE001
            caught.append([type(e).__name__, str(e)])
    ctx.emit("after")
    return {"caught": caught}


@worker.command("emit_nan_uncaught")
def emit_nan_uncaught(args, ctx):
    ctx.emit(float("nan"))
    return {"emitted": True}


@worker.command("bin_echo")
def bin_echo(args):
    b = args["b"]
    back = b if isinstance(b, bytes) else b.encode()
    return {"class": type(b).__name__, "back": back + b"!"}


@worker.command("raise_surrogate")
def raise_surrogate(args):
    raise ValueError(os.fsdecode(b"caf\xe9.txt") + " not found")


@worker.command("emit_past_cancel")
def emit_past_cancel(args, ctx):
    results = []
    end = time.monotonic() + args["secs"]
    while time.monotonic() < end:
        results.append([ctx.cancelled, ctx.emit(len(results))])
        time.sleep(0.02)
    write(args["notes"], json.dumps(results))
    return {"finished": True}


# --- output order ---------------------------------------------------------------------


@worker.command("print_order")
def print_order(args):
    tag = args["tag"]
    print("%s one" % tag)
    sys.stderr.write("%s two\n" % tag)
    print("%s three" % tag)
    os.write(1, ("%s four\n" % tag).encode())
    sys.stderr.write("%s five\n" % tag)
    sys.stdout.write("%s six\n" % tag)
    sys.stderr.write("%s seven\n" % tag)
    return {"pid": os.getpid()}


if MODE == "async":

    @worker.command
    async def coro(args):
        await asyncio.sleep(0)
        return where("coro")

    @worker.command("coro_ctx")
    async def coro_with_ctx(args, ctx):
        await asyncio.sleep(0)
        return dict(where("coro_ctx"), command=ctx.command)

    _gathered = {}

    @worker.command("together_async")
    async def together_async(args):
        key, n = args["key"], args["n"]
        entry = _gathered.setdefault(key, {"count": 0, "event": asyncio.Event()})
        entry["count"] += 1
        if entry["count"] == n:
            entry["event"].set()
        await asyncio.wait_for(entry["event"].wait(), 20)
        return where("together_async")

    @worker.command("await_cancel")
    async def await_cancel(args, ctx):
        try:
            await asyncio.sleep(20)
            return {"finished": True}
        except asyncio.CancelledError:
            write(args["notes"], json.dumps({"cancelled_error": True, "ctx_cancelled": ctx.cancelled}))
            raise

    @worker.command("raise_cancelled_async")
    async def raise_cancelled_async(args, ctx):
        raise snakepit_bridge.Cancelled("given up by the coroutine")

    @worker.command("session_async")
    async def session_async(args, ctx):
        key, s = args["key"], ctx.session
        out = {"before": await s.aget(key)}
        await s.aset(key, args["value"])
        out["after"] = await s.aget(key)
        out["deleted"] = await s.adelete(key)
        out["deleted_again"] = await s.adelete(key)
        out["gone"] = await s.aget(key)
        # The blocking forms raise in an async def handler.
        blocking = {}
        for name, fn in (("get", lambda: s.get(key)), ("call_host", lambda: ctx.call_host("session.get", {"key": key}))):
            try:
                blocking[name] = ["returned", fn()]
            except Exception as e:  # noqa: BLE001
                blocking[name] = [type(e).__name__, str(e)]
        out["blocking"] = blocking
        return out

    @worker.command("host_failures_async")
    async def host_failures_async(args, ctx):
        out = {}
        for function in args["functions"]:
            try:
                out[function] = ["ok", await ctx.acall_host(function, {})]
            except snakepit_bridge.HostCallError as e:
                out[function] = [type(e).__name__, e.type, e.message]
        return out

    _left = set()

    @worker.command("leave_task")
    async def leave_task(args, ctx):
        first = asyncio.Event()

        async def keep_emitting():
            results = []
            end = time.monotonic() + args["secs"]
            while time.monotonic() < end:
                results.append(ctx.emit(len(results)))
                first.set()
                await asyncio.sleep(0.02)
            write(args["notes"], json.dumps(results))

        task = asyncio.ensure_future(keep_emitting())
        _left.add(task)
        task.add_done_callback(_left.discard)
        await first.wait()
        return {"left": True}


@worker.command("child_fds")
def child_fds(args):
    import subprocess

    def links(pid):
        out = {}
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                out[fd] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                pass
        return out

    # close_fds=False: the child gets every descriptor that is inheritable.
    # Popen returns once the child has exec'd (its error pipe closed).
    child = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        theirs = links(child.pid)
    finally:
        child.kill()
        child.wait()
    return {"mine": links(os.getpid()), "theirs": theirs,
            "stderr": os.readlink("/proc/self/fd/2"), "child_pid": child.pid}


# --- the generic commands ------------------------------------------------------------
# "attr": as the README words it, with only `import snakepit_bridge`;
# "import": importing the submodule first.
GENERIC = os.environ.get("OPR_GENERIC")
if GENERIC == "import":
    import snakepit_bridge.generic  # noqa: E402
if GENERIC in ("attr", "import"):
    snakepit_bridge.generic.register(worker)


if __name__ == "__main__":
    worker.run()
