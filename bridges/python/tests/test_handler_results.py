"""What a handler returns or does that the codec, the serve loop or the
process's stdio must withstand (crates/adapters/tests/
outside_handler_results.rs shows the same through real pools), in both
modes and both codecs:

- README, Handlers: "A result that cannot be encoded is a failed reply
  (`TypeError`; ...)": a cyclic list and a lone surrogate too, and a chunk
  the same way;
- a `KeyboardInterrupt` the handler raises itself, with no SIGINT from the
  pool, is a failed reply of its class, the pool's SIGINT still `Cancelled`;
- descriptor 0 reads /dev/null: a subprocess inheriting stdin cannot eat
  the pool's frames;
- `sys.stdout.close()` in a handler does not silence the worker's log.
"""

import os
import shutil
import signal
import tempfile
import unittest

from ._helpers import CODECS, WorkerProcess, wait_until

SCRIPT = r'''
import os
import subprocess
import sys
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


def cyclic():
    items = []
    items.append(items)
    return {"v": items}


@worker.command("cycle")
def cycle(args):
    return cyclic()


@worker.command("surrogate")
def surrogate(args):
    return {"v": "caf\udce9"}


@worker.command("bad_chunks")
def bad_chunks(args, ctx):
    caught = []
    for value in (cyclic(), "caf\udce9", {1, 2}):
        try:
            ctx.emit(value)
        except Exception as exc:
            caught.append([type(exc).__name__, str(exc)])
    ctx.emit("fine")
    return caught


@worker.command("bad_chunk_uncaught")
def bad_chunk_uncaught(args, ctx):
    ctx.emit(cyclic())
    return "sent"


@worker.command("keyboard_interrupt")
def keyboard_interrupt(args):
    raise KeyboardInterrupt("raised by the handler itself")


@worker.command("sleep")
def sleep(args, ctx):
    sys.stderr.write("sleeping %d\n" % ctx.request_id)
    sys.stderr.flush()
    time.sleep(args["s"])
    return "slept"


@worker.command("child_reads_stdin")
def child_reads_stdin(args):
    # stdin inherited, as subprocess.run leaves it unless told otherwise.
    done = subprocess.run(["head", "-c", "4"], stdout=subprocess.PIPE, timeout=5)
    return {"child_read": len(done.stdout), "sys_stdin": sys.stdin.read(),
            "fd0": os.readlink("/proc/self/fd/0")}


@worker.command("close_stdout")
def close_stdout(args):
    sys.stdout.close()
    return "closed"


@worker.command("print")
def print_lines(args):
    for i in range(args["n"]):
        print("printed %s %d" % (args["tag"], i))
        sys.stderr.write("written %s %d\n" % (args["tag"], i))
    sys.stdout.write("no newline yet, ")
    sys.stdout.flush()
    sys.stdout.write("now one\n")
    return {"inheritable": os.get_inheritable(sys.stdout.fileno())}


if os.environ.get("HR_ASYNC") == "1":
    @worker.command("async_ping")
    async def async_ping(args):
        return "pong"


worker.run()
'''

MODES = ("sync", "async")


class _Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="snakepit-py-results-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "worker.py")
        with open(self.script, "w") as f:
            f.write(SCRIPT)

    def spawn(self, mode="sync", codec="json"):
        w = WorkerProcess(self.script, codec, env={"HR_ASYNC": "1" if mode == "async" else "0"})
        self.addCleanup(w.stop)
        hello = w.recv()
        self.assertEqual(hello["type"], "hello")
        self.assertEqual(hello["capabilities"]["max_concurrency"] > 1, mode == "async")
        return w

    def each(self):
        for mode in MODES:
            for codec in CODECS:
                with self.subTest(mode=mode, codec=codec):
                    yield mode, codec, self.spawn(mode, codec)

    def assert_serves(self, w, rid=1000):
        self.assertEqual(w.call(rid, "ping")["result"]["status"], "ok")
        self.assertIsNone(w.proc.poll())


class UnencodableResults(_Base):
    def test_a_cycle_and_a_lone_surrogate_are_type_errors_naming_the_codecs_error(self):
        for mode, codec, w in self.each():
            err = w.call(1, "cycle")["error"]
            self.assertEqual(err["type"], "TypeError", err)
            cause = "RecursionError" if codec == "json" else "ValueError"
            self.assertIn("result could not be encoded: %s: " % cause, err["message"])
            err = w.call(2, "surrogate")["error"]
            self.assertEqual(err["type"], "TypeError", err)
            self.assertIn("result could not be encoded: UnicodeEncodeError: ", err["message"])
            self.assertIn("surrogates not allowed", err["message"])
            self.assert_serves(w)

    def test_an_unencodable_chunk_raises_type_error_in_the_handler_and_sends_nothing(self):
        for mode, codec, w in self.each():
            w.request(1, "bad_chunks", stream=True)
            chunks = []
            while True:
                msg = w.recv()
                if msg.get("type") == "chunk":
                    chunks.append(msg["data"])
                    continue
                break
            self.assertEqual(chunks, ["fine"])
            caught = msg["result"]
            self.assertEqual([c[0] for c in caught], ["TypeError"] * 3, caught)
            self.assertIn("chunk could not be encoded: ", caught[0][1])
            self.assertIn("UnicodeEncodeError: ", caught[1][1])
            err = w.call(2, "bad_chunk_uncaught", stream=True)["error"]
            self.assertEqual(err["type"], "TypeError", err)
            self.assertIn("chunk could not be encoded: ", err["message"])
            self.assert_serves(w)


class KeyboardInterruptOfTheHandler(_Base):
    def test_raised_by_the_handler_is_a_failed_reply_of_its_class(self):
        for mode, codec, w in self.each():
            err = w.call(1, "keyboard_interrupt")["error"]
            self.assertEqual((err["type"], err["message"]),
                             ("KeyboardInterrupt", "raised by the handler itself"))
            self.assertIn("raise KeyboardInterrupt", err["traceback"])
            self.assert_serves(w)

    def test_the_pools_sigint_still_gives_exactly_one_cancelled_reply(self):
        w = self.spawn("sync")
        w.request(1, "sleep", {"s": 30})
        self.assertTrue(wait_until(lambda: "sleeping 1" in w.stderr, 10), w.stderr)
        w.signal(signal.SIGINT)
        reply = w.recv()
        self.assertEqual((reply["id"], reply["error"]["type"]), (1, "Cancelled"), reply)
        self.assertEqual(w.call(2, "keyboard_interrupt")["error"]["type"], "KeyboardInterrupt")
        reply = w.call(3, "ping")
        self.assertEqual(reply["id"], 3)  # nothing else came in between
        self.assertTrue(reply["success"])


class StdinIsNotTheFrames(_Base):
    def test_a_child_inheriting_stdin_reads_nothing_and_the_call_written_meanwhile_is_served(self):
        for mode, codec, w in self.each():
            w.request(1, "child_reads_stdin")
            # Written while the child runs (or waits in the pipe for the
            # sync loop): the child must not eat its first bytes.
            w.request(2, "ping")
            got = {}
            while len(got) < 2:
                msg = w.recv()
                got[msg["id"]] = msg
            self.assertEqual(got[1]["result"], {"child_read": 0, "sys_stdin": "", "fd0": "/dev/null"},
                             got[1])
            self.assertTrue(got[2]["success"], got[2])
            self.assert_serves(w)


class StdoutClosedByAHandler(_Base):
    def test_print_still_reaches_stderr_after_sys_stdout_close(self):
        for mode, codec, w in self.each():
            self.assertEqual(w.call(1, "close_stdout")["result"], "closed")
            reply = w.call(2, "print", {"tag": "after", "n": 3})
            self.assertTrue(reply["success"], reply)
            self.assertEqual(reply["result"], {"inheritable": False})
            self.assertTrue(wait_until(lambda: "now one" in w.stderr, 10), w.stderr)
            # Line by line, in order with what the handler wrote to stderr.
            lines = [line for line in w.stderr.splitlines()
                     if line.startswith(("printed", "written", "no newline"))]
            expected = []
            for i in range(3):
                expected += ["printed after %d" % i, "written after %d" % i]
            self.assertEqual(lines, expected + ["no newline yet, now one"])
            self.assert_serves(w)


if __name__ == "__main__":
    unittest.main()
