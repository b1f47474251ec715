"""The worker's dispatcher, run in-process over pipes."""

import asyncio
import functools
import time
import unittest

from ._helpers import CODECS, run_in_process
from snakepit_bridge import Cancelled, Worker, _wire, generic
from snakepit_bridge._handler import describe

TS = "2026-11-27T12:24:04.051023Z"


def req(rid, command, args=None, **extra):
    frame = {"id": rid, "command": command, "args": {} if args is None else args, "timestamp": TS}
    frame.update(extra)
    return frame


class HandlerShapeTests(unittest.TestCase):
    def test_signatures_are_read_at_registration(self):
        def two(args, ctx):
            pass

        def one(args):
            pass

        def star(*a):
            pass

        async def coro(args, ctx):
            pass

        class Obj:
            def method(self, args):
                pass

            def __call__(self, args, ctx):
                pass

        self.assertEqual(describe(two), (True, False))
        self.assertEqual(describe(one), (False, False))
        self.assertEqual(describe(star), (True, False))
        self.assertEqual(describe(coro), (True, True))
        self.assertEqual(describe(Obj().method), (False, False))
        self.assertEqual(describe(Obj()), (True, False))
        self.assertEqual(describe(functools.partial(two, {})), (False, False))
        self.assertEqual(describe(lambda args: args), (False, False))

    def test_mode_and_capabilities(self):
        w = Worker(codec="json")
        self.assertFalse(w.is_async)
        self.assertEqual(w.capabilities(), {"max_concurrency": 1, "cancel": False, "sigint": True,
                                            "streaming": True, "host_calls": True, "pipeline": True})

        @w.command("x")
        async def x(args):
            return 1

        self.assertTrue(w.is_async)
        self.assertEqual(w.capabilities()["max_concurrency"], 8)
        self.assertTrue(w.capabilities()["cancel"])
        self.assertFalse(w.capabilities()["sigint"])
        self.assertEqual(Worker(codec="json", max_concurrency=3).capabilities()["max_concurrency"], 3)

    def test_decorator_forms(self):
        w = Worker(codec="json")

        @w.command
        def bare(args):
            return 1

        @w.command()
        def empty(args):
            return 2

        self.assertIn("bare", w.commands)
        self.assertIn("empty", w.commands)
        self.assertIn("ping", w.commands)  # always there for the init handshake


class DispatchTests(unittest.TestCase):
    def make(self, codec_name, async_mode=False):
        w = Worker(codec=codec_name)
        generic.register(w)

        @w.command("fail")
        def fail(args):
            raise KeyError("nope")

        @w.command("args_only")
        def args_only(args):
            return sorted(args)

        @w.command("ctx")
        def ctx_cmd(args, ctx):
            return {"rid": ctx.request_id, "session": ctx.session_id, "worker": ctx.worker_id,
                    "tp": ctx.traceparent, "stream": ctx.stream, "timeout": ctx.timeout_ms}

        @w.command("chunks")
        def chunks(args, ctx):
            for i in range(3):
                ctx.emit(i)
            return "end"

        @w.command("self_cancel")
        def self_cancel(args):
            raise Cancelled()

        @w.command("unencodable")
        def unencodable(args):
            return object()

        if async_mode:
            @w.command("anap")
            async def anap(args):
                await asyncio.sleep(args["s"])
                return args["s"]

        return w

    def check_common(self, codec_name, async_mode):
        codec = _wire.get_codec(codec_name)
        w = self.make(codec_name, async_mode)
        frames = [
            req(1, "ping", {"initialization": True, "worker_id": "pool_worker_1_210"}),
            req(2, "ping", {"health_check": True}),
            req(3, "nope"),
            b"\x00\x00\x00\x03abc",
            {"id": 4, "args": {}},
            {"command": "ping", "args": {}},
            {"id": 5, "command": "echo", "args": [1]},
            {"type": "gossip", "id": 6},
            b"\x00\x00\x00\x00",
            req(7, "fail"),
            req(8, "args_only", {"b": 1, "a": 2}),
            req(9, "ctx", session_id="s1", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                timeout_ms=500, stream=True),
            req(10, "chunks", stream=True),
            req(11, "chunks"),
            req(12, "self_cancel"),
            req(13, "unencodable"),
            {"id": 14, "command": "echo"},  # args missing: treated as empty
            {"type": "cancel", "id": 99},
            {"type": "host_reply", "id": 42, "success": True, "result": None},
            req(15, "compute", {"operation": "divide", "a": 1, "b": 0}),
            req(16, "info"),
        ]
        code, out = run_in_process(w, frames, codec)
        self.assertEqual(code, 0)
        hello = out.pop(0)
        self.assertEqual(hello["type"], "hello")
        self.assertEqual(hello["capabilities"]["max_concurrency"], 8 if async_mode else 1)
        replies = {}
        chunks = {}
        for msg in out:
            _wire.validate(msg, "to_pool")
            if msg.get("type") == "chunk":
                chunks.setdefault(msg["id"], []).append(msg["data"])
            else:
                replies.setdefault(msg["id"], []).append(msg)

        def one(rid):
            self.assertEqual(len(replies[rid]), 1, replies.get(rid))
            return replies[rid][0]

        ping = one(1)["result"]
        self.assertEqual(ping["status"], "ok")
        self.assertEqual(ping["worker_id"], "pool_worker_1_210")
        self.assertEqual(ping["echo"], {"initialization": True, "worker_id": "pool_worker_1_210"})
        self.assertEqual(list(ping), ["status", "bridge_type", "uptime", "requests_handled", "timestamp",
                                      "worker_id", "echo", "python_version", "pid"])
        self.assertEqual(one(2)["result"]["worker_id"], "pool_worker_1_210")
        self.assertEqual(one(3)["error"]["type"], "UnknownCommand")
        self.assertEqual(one(3)["error"]["message"], "Unknown command: nope")
        # id 0 collects the protocol errors and the id-less invalid request.
        zero = [m["error"]["type"] for m in replies[0]]
        self.assertEqual(sorted(zero), ["InvalidRequest", "ProtocolError", "ProtocolError", "ProtocolError"])
        self.assertEqual(one(4)["error"]["type"], "InvalidRequest")
        self.assertEqual(one(5)["error"]["type"], "InvalidRequest")
        err = one(7)["error"]
        self.assertEqual((err["type"], err["message"]), ("KeyError", "'nope'"))
        self.assertIn("raise KeyError", err["traceback"])
        self.assertFalse(one(7)["success"])
        self.assertEqual(one(8)["result"], ["a", "b"])
        self.assertEqual(one(9)["result"], {"rid": 9, "session": "s1", "worker": "pool_worker_1_210",
                                            "tp": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                            "stream": True, "timeout": 500})
        self.assertEqual(chunks[10], [0, 1, 2])
        self.assertEqual(one(10)["result"], "end")
        self.assertNotIn(11, chunks)  # no stream asked for: nothing sent
        self.assertEqual(one(12)["error"]["type"], "Cancelled")
        self.assertEqual(one(13)["error"]["type"], "TypeError")
        self.assertIn("could not be encoded", one(13)["error"]["message"])
        self.assertEqual(one(14)["result"]["echoed"], {})
        self.assertNotIn(99, replies)
        self.assertNotIn(42, replies)
        self.assertEqual(one(15)["error"]["message"], "Division by zero")
        info = one(16)["result"]
        self.assertEqual(info["bridge_info"]["supported_commands"], w.commands)
        self.assertEqual(set(info["system_info"]), {"python_version", "platform", "pid"})

    def test_sync_mode(self):
        for codec_name in CODECS:
            with self.subTest(codec_name):
                self.check_common(codec_name, False)

    def test_async_mode(self):
        for codec_name in CODECS:
            with self.subTest(codec_name):
                self.check_common(codec_name, True)

    def test_a_failed_replys_traceback_starts_at_the_handler(self):
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        for async_mode in (False, True):
            with self.subTest(async_mode=async_mode):
                w = self.make("json", async_mode)
                # A plain handler runs on the main thread (sync) or on a
                # thread (async); each with and without a span.
                frames = [req(1, "fail"), req(2, "fail", traceparent=tp)]
                if async_mode:
                    @w.command("afail")
                    async def afail(args):
                        raise KeyError("nope")

                    frames += [req(3, "afail"), req(4, "afail", traceparent=tp)]
                _, out = run_in_process(w, frames, _wire.get_codec("json"))
                replies = out[1:]
                self.assertEqual(len(replies), len(frames))
                for reply in replies:
                    frames_shown = [line for line in reply["error"]["traceback"].splitlines()
                                    if line.lstrip().startswith("File ")]
                    self.assertEqual(len(frames_shown), 1, reply)
                    self.assertIn("test_worker.py", frames_shown[0])
                    self.assertRegex(frames_shown[0], r"in a?fail$")

    def test_async_runs_concurrently_and_cancels(self):
        codec = _wire.get_codec("json")
        w = self.make("json", async_mode=True)
        frames = [req(1, "anap", {"s": 0.3}), req(2, "anap", {"s": 0.3}), req(3, "anap", {"s": 30}),
                  {"type": "cancel", "id": 3}]
        start = time.monotonic()
        code, out = run_in_process(w, frames, codec)
        elapsed = time.monotonic() - start
        replies = {m["id"]: m for m in out[1:]}
        self.assertEqual(replies[1]["result"], 0.3)
        self.assertEqual(replies[2]["result"], 0.3)
        self.assertEqual(replies[3]["error"]["type"], "Cancelled")
        self.assertLess(elapsed, 2.0)


class FieldTypeTests(unittest.TestCase):
    """docs/protocol.md, section 4: an optional request field whose type is
    not the table's is absent; ``timeout_ms`` is an integer >= 0. A cancel
    or host_reply without an integer id names nothing and is ignored."""

    def make(self, codec_name, async_mode):
        w = Worker(codec=codec_name)

        @w.command("fields")
        def fields(args, ctx):
            return [ctx.session_id, ctx.traceparent, ctx.tracestate, ctx.baggage, ctx.timeout_ms]

        if async_mode:
            @w.command("anap")
            async def anap(args):
                return None

        return w

    def test_optional_fields_of_the_wrong_type_read_as_none(self):
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        frames = [
            req(1, "fields", session_id="s1", traceparent=tp, tracestate="v=1", baggage="k=v", timeout_ms=0),
            req(2, "fields", session_id=5, traceparent=True, tracestate={"a": 1}, baggage=["k=v"],
                timeout_ms="100"),
            req(3, "fields", traceparent=tp, tracestate=5, baggage=5, timeout_ms=2**64 - 1),
        ]
        bad_timeouts = [1.5, -0.5, 1e300, -5, True]
        frames += [req(10 + n, "fields", timeout_ms=t) for n, t in enumerate(bad_timeouts)]
        for codec_name in CODECS:
            codec = _wire.get_codec(codec_name)
            expected = {
                1: ["s1", tp, "v=1", "k=v", 0],
                2: [None] * 5,
                3: [None, tp, None, None, 2**64 - 1],
            }
            expected.update({10 + n: [None] * 5 for n in range(len(bad_timeouts))})
            sent = list(frames)
            if codec_name == "msgpack":
                # A MessagePack bin where a str belongs is no string.
                sent.append(req(20, "fields", session_id=b"s1", traceparent=tp.encode(), baggage=b"k=v"))
                expected[20] = [None] * 5
            for async_mode in (False, True):
                with self.subTest(codec=codec_name, async_mode=async_mode):
                    code, out = run_in_process(self.make(codec_name, async_mode), sent, codec)
                    self.assertEqual(code, 0)
                    replies = {m["id"]: m for m in out[1:]}
                    self.assertEqual({rid: m.get("result") for rid, m in replies.items()}, expected)

    def test_cancels_and_host_replies_without_an_integer_id_are_ignored(self):
        frames = []
        for kind in ("cancel", "host_reply"):
            for rid in ("1", None, 1.0, 1.5, [1], True):
                frames.append({"type": kind, "id": rid, "success": True, "result": None})
            frames.append({"type": kind})
        frames.append(req(1, "fields"))
        for codec_name in CODECS:
            for async_mode in (False, True):
                with self.subTest(codec=codec_name, async_mode=async_mode):
                    codec = _wire.get_codec(codec_name)
                    code, out = run_in_process(self.make(codec_name, async_mode), frames, codec)
                    self.assertEqual(code, 0)
                    self.assertEqual(out[1:], [{"id": 1, "success": True, "result": [None] * 5}])


class OtelTests(unittest.TestCase):
    def test_span_joins_the_callers_trace(self):
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        except ImportError:
            self.skipTest("opentelemetry-sdk not installed")
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()  # the first one set wins
        w = Worker(codec="json")

        @w.command("traced")
        def traced(args, ctx):
            with trace.get_tracer("user").start_as_current_span("user work"):
                return "ok"

        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        run_in_process(w, [req(1, "traced", traceparent=tp), req(2, "traced")], _wire.get_codec("json"))
        spans = {s.name: s for s in exporter.get_finished_spans()}
        if not spans:
            self.skipTest("another tracer provider was installed first")
        worker_span = spans["snakepit.worker traced"]
        self.assertEqual(format(worker_span.context.trace_id, "032x"), "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(format(worker_span.parent.span_id, "016x"), "00f067aa0ba902b7")
        user = [s for s in exporter.get_finished_spans() if s.name == "user work"]
        self.assertEqual(user[0].parent.span_id, worker_span.context.span_id)
        self.assertEqual(len(user), 2)  # request 2 had no traceparent: no worker span

    def test_context_is_extracted_by_the_configured_propagator(self):
        try:
            from opentelemetry import propagate
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            self.skipTest("opentelemetry-api not installed")

        seen = []

        class Recording(TraceContextTextMapPropagator):
            def extract(self, carrier, context=None, getter=None):
                seen.append(dict(carrier))
                return super().extract(carrier, context=context)

        before = propagate.get_global_textmap()
        propagate.set_global_textmap(Recording())
        try:
            w = Worker(codec="json")
            w.command("traced")(lambda args: "ok")
            tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            run_in_process(w, [req(1, "traced", traceparent=tp, tracestate="vendor=x")],
                           _wire.get_codec("json"))
        finally:
            propagate.set_global_textmap(before)
        self.assertEqual(seen, [{"traceparent": tp, "tracestate": "vendor=x"}])

    def test_a_propagator_that_raises_leaves_the_call_untraced(self):
        try:
            from opentelemetry import propagate
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            self.skipTest("opentelemetry-api not installed")

        class Raising(TraceContextTextMapPropagator):
            def extract(self, carrier, context=None, getter=None):
                raise TypeError("a propagator that fails")

        before = propagate.get_global_textmap()
        propagate.set_global_textmap(Raising())
        try:
            for async_mode in (False, True):
                w = Worker(codec="json")
                w.command("traced")(lambda args: "ok")
                if async_mode:
                    w.command("atraced")(_async_ok)
                frames = [req(1, "traced", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
                if async_mode:
                    frames.append(req(2, "atraced", traceparent="garbage"))
                _, out = run_in_process(w, frames, _wire.get_codec("json"))
                self.assertEqual([m.get("result") for m in out[1:]], ["ok"] * len(frames), out)
        finally:
            propagate.set_global_textmap(before)


async def _async_ok(args):
    return "ok"


if __name__ == "__main__":
    unittest.main()
