"""Framing and codecs against the shared byte-exact vectors."""

import io
import json
import os
import sys
import threading
import unittest

from ._helpers import HAVE_MSGPACK, VECTORS
from snakepit_bridge import _wire
from snakepit_bridge._wire import FrameError, FrameReader


def _from_json(value):
    """Vector values use {"$bin": hex} for binary strings."""
    if isinstance(value, dict):
        if list(value) == ["$bin"]:
            return bytes.fromhex(value["$bin"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _decode_frame(codec, frame, direction):
    payload = _wire.read_frame_from(io.BytesIO(frame))
    return _wire.decode_payload(codec, payload, direction)


class VectorTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(VECTORS, "rb") as f:
            data = json.load(f)
        cls.max_frame_size = data["max_frame_size"]
        cls.cases = data["cases"]

    def codec(self, name):
        if name == "msgpack" and not HAVE_MSGPACK:
            self.skipTest("msgpack not installed")
        return _wire.get_codec(name)

    def test_max_frame_size_matches(self):
        self.assertEqual(self.max_frame_size, _wire.MAX_FRAME_SIZE)

    def test_good_cases_decode(self):
        good = [c for c in self.cases if "value" in c]
        self.assertTrue(good)
        for case in good:
            with self.subTest(case["name"]):
                codec = self.codec(case["codec"])
                got = _decode_frame(codec, bytes.fromhex(case["frame_hex"]), case["direction"])
                self.assertEqual(got, _from_json(case["value"]))

    def test_good_cases_decode_with_frame_reader(self):
        # The worker's own reader, fed one byte at a time.
        for case in self.cases:
            if "value" not in case:
                continue
            with self.subTest(case["name"]):
                codec = self.codec(case["codec"])
                reader = FrameReader()
                frame = bytes.fromhex(case["frame_hex"])
                payload = None
                for i in range(len(frame)):
                    self.assertIsNone(payload)
                    reader.feed(frame[i:i + 1])
                    payload = reader.next_frame()
                self.assertEqual(codec.decode(payload), _from_json(case["value"]))
                self.assertFalse(reader.pending())

    def test_to_pool_cases_encode_exactly(self):
        cases = [c for c in self.cases if c.get("encode") and c["direction"] == "to_pool"]
        self.assertTrue(cases)
        for case in cases:
            with self.subTest(case["name"]):
                codec = self.codec(case["codec"])
                frame = _wire.encode_frame(codec, _from_json(case["value"]))
                self.assertEqual(frame.hex(), case["frame_hex"])

    def test_to_worker_cases_encode_exactly(self):
        # Not required, but a fake pool in tests relies on it.
        for case in self.cases:
            if case.get("encode") and case["direction"] == "to_worker":
                with self.subTest(case["name"]):
                    codec = self.codec(case["codec"])
                    frame = _wire.encode_frame(codec, _from_json(case["value"]))
                    self.assertEqual(frame.hex(), case["frame_hex"])

    def test_bad_cases_are_rejected(self):
        bad = [c for c in self.cases if "error" in c]
        self.assertTrue(bad)
        for case in bad:
            with self.subTest(case["name"]):
                codec = self.codec(case["codec"])
                with self.assertRaises(FrameError) as cm:
                    _decode_frame(codec, bytes.fromhex(case["frame_hex"]), case["direction"])
                self.assertEqual(cm.exception.kind, case["error"])

    def test_bad_cases_with_fd_reader(self):
        for case in self.cases:
            if "error" not in case:
                continue
            with self.subTest(case["name"]):
                codec = self.codec(case["codec"])
                r, w = os.pipe()
                os.write(w, bytes.fromhex(case["frame_hex"]))
                os.close(w)
                try:
                    reader = FrameReader(r)
                    with self.assertRaises(FrameError) as cm:
                        payload = reader.read_frame()
                        _wire.decode_payload(codec, payload, case["direction"])
                    self.assertEqual(cm.exception.kind, case["error"])
                finally:
                    os.close(r)


class CodecTests(unittest.TestCase):
    def test_json_is_compact_utf8(self):
        codec = _wire.get_codec("json")
        self.assertEqual(codec.encode({"a": "héllo ✓", "b": [1, 2]}),
                         '{"a":"héllo ✓","b":[1,2]}'.encode("utf-8"))

    def test_codec_from_env(self):
        old = os.environ.get("SNAKEPIT_CODEC")
        try:
            os.environ.pop("SNAKEPIT_CODEC", None)
            self.assertEqual(_wire.get_codec().name, "json")
            os.environ["SNAKEPIT_CODEC"] = "json"
            self.assertEqual(_wire.get_codec().name, "json")
            if HAVE_MSGPACK:
                os.environ["SNAKEPIT_CODEC"] = "msgpack"
                self.assertEqual(_wire.get_codec().name, "msgpack")
            os.environ["SNAKEPIT_CODEC"] = "xml"
            with self.assertRaises(ValueError):
                _wire.get_codec()
        finally:
            if old is None:
                os.environ.pop("SNAKEPIT_CODEC", None)
            else:
                os.environ["SNAKEPIT_CODEC"] = old

    def test_missing_msgpack_names_the_package(self):
        saved = sys.modules.get("msgpack")
        sys.modules["msgpack"] = None  # makes `import msgpack` fail
        try:
            with self.assertRaises(ImportError) as cm:
                _wire.get_codec("msgpack")
            self.assertIn("pip install msgpack", str(cm.exception))
        finally:
            if saved is None:
                del sys.modules["msgpack"]
            else:
                sys.modules["msgpack"] = saved

    def test_json_codec_does_not_import_msgpack(self):
        import subprocess

        from ._helpers import BRIDGE_DIR

        code = ("import sys; import snakepit_bridge as s; w = s.Worker(codec='json'); "
                "print('msgpack' in sys.modules, 'asyncio' in sys.modules)")
        out = subprocess.check_output([sys.executable, "-c", code], cwd=BRIDGE_DIR)
        self.assertEqual(out.split(), [b"False", b"False"])

    @unittest.skipUnless(HAVE_MSGPACK, "msgpack not installed")
    def test_msgpack_str_and_bin(self):
        codec = _wire.get_codec("msgpack")
        packed = codec.encode({"s": "x", "b": b"\x00"})
        self.assertEqual(packed, bytes.fromhex("82a173a178a162c40100"))
        self.assertEqual(codec.decode(packed), {"s": "x", "b": b"\x00"})


class ReaderTests(unittest.TestCase):
    def test_many_frames_in_one_read_and_split_frames(self):
        codec = _wire.get_codec("json")
        frames = b"".join(_wire.encode_frame(codec, {"id": i}) for i in range(1, 50))
        r, w = os.pipe()
        os.write(w, frames[:37])
        os.write(w, frames[37:])
        os.close(w)
        reader = FrameReader(r)
        got = []
        while True:
            payload = reader.read_frame()
            if payload is None:
                break
            got.append(codec.decode(payload)["id"])
        os.close(r)
        self.assertEqual(got, list(range(1, 50)))

    def test_too_large_frame_is_skipped_and_stream_stays_in_sync(self):
        reader = FrameReader(max_size=10)
        reader.feed(b"\x00\x00\x00\x0c" + b"x" * 5)
        with self.assertRaises(FrameError) as cm:
            reader.next_frame()
        self.assertEqual(cm.exception.kind, "too_large")
        reader.feed(b"y" * 7 + b"\x00\x00\x00\x02{}")
        self.assertEqual(reader.next_frame(), b"{}")

    def test_a_too_large_frame_read_whole_in_one_read_is_refused_too(self):
        r, w = os.pipe()
        os.write(w, b"\x00\x00\x00\x14" + b"x" * 20 + b"\x00\x00\x00\x02{}")
        os.close(w)
        reader = FrameReader(r, max_size=10)
        try:
            with self.assertRaises(FrameError) as cm:
                reader.read_frame()
            self.assertEqual(cm.exception.kind, "too_large")
            self.assertEqual(reader.read_frame(), b"{}")
            # Alone in its read (the fast path), too.
            r2, w2 = os.pipe()
            os.write(w2, b"\x00\x00\x00\x14" + b"x" * 20)
            os.close(w2)
            alone = FrameReader(r2, max_size=10)
            with self.assertRaises(FrameError) as cm:
                alone.read_frame()
            self.assertEqual(cm.exception.kind, "too_large")
            os.close(r2)
        finally:
            os.close(r)

    def _writer(self, w, data):
        """A thread writing `data` to `w` in pieces of 100,000 bytes (as a
        pool into a pipe that fills), then closing it; started."""

        def write():
            try:
                for at in range(0, len(data), 100_000):
                    os.write(w, data[at:at + 100_000])
            except BrokenPipeError:
                pass  # the test closed its end: it failed, or is done
            os.close(w)

        writer = threading.Thread(target=write)
        writer.start()
        return writer

    def _large_stream(self):
        """A 3 MiB frame, then a small one, as (frames, big payload)."""
        big = b"\x00\x00\x00\x00"[:0] + bytes(range(256)) * (3 * 4096)
        frames = (
            len(big).to_bytes(4, "big") + big + b"\x00\x00\x00\x02{}"
        )
        return frames, big

    def test_a_large_frame_interrupted_mid_read_keeps_what_was_read(self):
        frames, big = self._large_stream()
        r, w = os.pipe()
        real = os.read
        calls = []

        def interrupted(fd, n):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt  # a SIGINT while the frame arrives
            return real(fd, n)

        writer = self._writer(w, frames)
        reader = FrameReader(r)
        os.read = interrupted
        try:
            with self.assertRaises(KeyboardInterrupt):
                reader.read_frame()
            self.assertTrue(reader.pending())
            first = reader.read_frame()
            second = reader.read_frame()
        finally:
            os.read = real
            os.close(r)  # a writer left blocked (a failed test) ends too
            writer.join()
        self.assertGreater(len(calls), 3)
        self.assertEqual(bytes(first), big)
        self.assertEqual(second, b"{}")

    def test_a_large_frame_cut_short_is_truncated(self):
        frames, _ = self._large_stream()
        r, w = os.pipe()

        writer = self._writer(w, frames[:2_000_000])
        reader = FrameReader(r)
        try:
            with self.assertRaises(FrameError) as cm:
                reader.read_frame()
            self.assertEqual(cm.exception.kind, "truncated")
            self.assertFalse(reader.pending())
        finally:
            os.close(r)
            writer.join()

    def test_zero_length_frame_is_invalid(self):
        with self.assertRaises(FrameError) as cm:
            _wire.decode_payload(_wire.get_codec("json"), b"")
        self.assertEqual(cm.exception.kind, "invalid_payload")


if __name__ == "__main__":
    unittest.main()
