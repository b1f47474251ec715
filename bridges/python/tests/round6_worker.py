"""A worker for test_outside_round6.py.

``R6_ASYNC=1`` serves with the asyncio loop (``max_concurrency=4``);
otherwise every handler is a plain function and the worker runs one call
at a time.

``signal_reader``: a thread of the handler calls the host and so reads
stdin, while the handler's own thread sleeps (or, with ``main_calls``,
waits for its own host call's reply, which that thread reads); once that thread holds stdin
a third thread sends ``signum`` to it (not to the main thread). The C-level
part of CPython's signal handler then runs on the reading thread: the
Python handler waits for the main thread, which sits in a sleep the signal
did not interrupt. This is the state a signal that lands just before the
main thread blocks leaves behind too (CPython runs Python handlers between
bytecodes only), made certain instead of rare.
"""

import os
import signal
import sys
import threading
import time

import snakepit_bridge

ASYNC = os.environ.get("R6_ASYNC") == "1"
worker = snakepit_bridge.Worker(max_concurrency=4 if ASYNC else None)
snakepit_bridge.generic.register(worker)

_outcomes = {}


def note(text):
    sys.stderr.write(f"R6 {text}\n")
    sys.stderr.flush()


def _attempt(ctx, args):
    try:
        return {"result": ctx.call_host("echo", args)}
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc)}


@worker.command("signal_reader")
def signal_reader(args, ctx):
    signum = getattr(signal, args["signal"])
    # With main_calls the handler's own thread calls the host too, once the
    # other thread reads stdin, and waits for that thread to read its reply.
    main_calls = args.get("main_calls", False)
    server = ctx._server  # white-box: who reads stdin now
    reader_ident = []

    def call():
        reader_ident.append(threading.get_ident())
        _outcomes[ctx.request_id] = _attempt(ctx, {"tag": "reader"})

    sleeping = []

    def kick():
        # Waits (state, not time) until the host-calling thread holds
        # stdin and the handler's thread is about to sleep (inside its
        # try), then signals the reading thread only.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = server._main_waiting if main_calls else sleeping
            if ready and reader_ident and server._stdin_holder == reader_ident[0]:
                note("kick")
                signal.pthread_kill(reader_ident[0], signum)
                return
            time.sleep(0.001)
        note("kick: the reading thread never held stdin")

    threading.Thread(target=call, daemon=True).start()
    threading.Thread(target=kick, daemon=True).start()
    try:
        if main_calls:
            deadline = time.monotonic() + 60
            while not (reader_ident and server._stdin_holder == reader_ident[0]):
                if time.monotonic() > deadline:
                    return "the reading thread never held stdin"
                time.sleep(0.001)
            _outcomes[f"{ctx.request_id}/main"] = _attempt(ctx, {"tag": "main"})
            return _outcomes[f"{ctx.request_id}/main"]
        sleeping.append(True)
        time.sleep(args.get("sleep", 60))
    finally:
        note(f"{ctx.request_id} finally ran")
    return "slept to the end"


if ASYNC:

    @worker.command("ablock_signalled_thread")
    async def ablock_signalled_thread(args, ctx):
        """Blocks the event loop (time.sleep in an async def) while a thread
        of its own takes a SIGTERM: the kernel may give a process's signal
        to any of its threads."""
        sleeping = []

        def take():
            deadline = time.monotonic() + 60
            while not sleeping and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.05)  # into the sleep proper (not needed for the state)
            note("kick")
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        threading.Thread(target=take, daemon=True).start()
        sleeping.append(True)
        time.sleep(args.get("sleep", 60))
        return "slept to the end"


@worker.command("outcome")
def outcome(args):
    return _outcomes.get(args["id"])


if __name__ == "__main__":
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # stacks on demand, when a test stalls
    code = worker.run()
    # Back in the script after the end of input: the bridge's own threads
    # (asyncio mode's signal watcher) end with run().
    watchers = [t for t in threading.enumerate() if t.name == "snakepit-signals"]
    for t in watchers:
        t.join(20)
    note(f"after run: {code} watchers {len(watchers)} alive {[t.name for t in watchers if t.is_alive()]}")
