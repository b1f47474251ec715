"""Framing and codecs of the Snakepit wire protocol (version 1).

A frame is a 4-byte big-endian length followed by that many payload bytes.
The payload is one JSON or MessagePack map. This module knows nothing about
workers; it turns bytes into dicts and back, and says precisely why a frame
is bad so the worker can answer with ``ProtocolError``/``InvalidRequest``.
"""

import json
import os
import struct

__all__ = [
    "MAX_FRAME_SIZE",
    "MAX_LENGTH",
    "frame_limit",
    "FrameError",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "get_codec",
    "encode_frame",
    "validate",
    "FrameReader",
    "write_all",
]

PROTOCOL_VERSION = 1
# The pool's default max_frame_size; a larger length prefix is rejected
# before anything is allocated for it.
MAX_FRAME_SIZE = 64 * 1024 * 1024
# The largest length a 4-byte prefix can announce: no frame is longer,
# whatever limit the pool names.
MAX_LENGTH = 2**32 - 1

_HEADER = struct.Struct(">I")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


def frame_limit(text):
    """The frame limit that ``SNAKEPIT_MAX_FRAME_SIZE`` holds: ``(limit,
    None)``, or ``(MAX_FRAME_SIZE, why)`` when ``text`` is no positive
    decimal integer. ``None`` or an empty text is the default, with no
    complaint. Spaces around the digits are allowed; signs, underscores,
    other digits than ASCII ones and anything else are not. A value above
    MAX_LENGTH is taken as MAX_LENGTH: no frame can be longer."""
    if text is None:
        return MAX_FRAME_SIZE, None
    digits = text.strip(" \t\r\n")
    if not digits:
        return MAX_FRAME_SIZE, None
    significant = digits.lstrip("0")
    if not significant or any(c not in "0123456789" for c in digits):
        shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
        return MAX_FRAME_SIZE, (f"SNAKEPIT_MAX_FRAME_SIZE={shown} is not a positive integer;"
                                f" using the default, {MAX_FRAME_SIZE}")
    if len(significant) > 10:  # past any 4-byte length; int() would refuse 5000 digits
        return MAX_LENGTH, None
    return min(int(significant), MAX_LENGTH), None


class FrameError(Exception):
    """A frame that cannot be used.

    ``kind`` is one of the error kinds of the test vectors: ``truncated``,
    ``too_large``, ``invalid_payload``, ``invalid_utf8``, ``missing_field``,
    ``wrong_type``. ``frame_id`` is the frame's id when it had a usable one,
    so that an invalid request can still be answered under its own id.
    """

    def __init__(self, kind, message, frame_id=None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.frame_id = frame_id
        # True when the frame was a request (answered with InvalidRequest).
        self.request = False


class Codec:
    """Turns one payload into one value and back."""

    name = "?"

    def encode(self, value):
        raise NotImplementedError

    def decode(self, payload):
        raise NotImplementedError


class JsonCodec(Codec):
    name = "json"

    def __init__(self):
        # No NaN or infinities: JSON has none, and the pool would take
        # `NaN` for a broken frame (ValueError: a failed reply instead).
        encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        self._encode_slow = encoder.encode
        # NaN, Infinity and -Infinity are not JSON either: a frame holding
        # one is not JSON, as the other bridges read it.
        decoder = json.JSONDecoder(parse_constant=_not_json)
        self._decode = decoder.decode
        self._scan = decoder.scan_once
        # JSONEncoder.encode builds a new C encoder on every call; on the
        # ping hot path that is a third of the encoding time. Build it once.
        # (No circular-reference check: a cyclic result fails with
        # RecursionError, which becomes a failed reply.)
        c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
        c_encode_str = getattr(json.encoder, "c_encode_basestring", None)
        self._c_encode = None
        if c_make_encoder is not None and c_encode_str is not None:
            self._c_encode = c_make_encoder(
                None, _json_default, c_encode_str, None, ":", ",", False, False, False
            )

    def encode(self, value):
        enc = self._c_encode
        if enc is None:
            return self._encode_slow(value).encode("utf-8")
        return "".join(enc(value, 0)).encode("utf-8")

    def decode(self, payload):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError("invalid_utf8", f"frame is not valid UTF-8: {exc}")
        try:
            # scan_once skips the two regex whitespace matches of decode();
            # anything unusual (leading/trailing whitespace, errors) goes
            # through decode() for its exact behaviour and messages.
            try:
                value, end = self._scan(text, 0)
            except StopIteration:
                return self._decode(text)
            if end != len(text):
                return self._decode(text)
            return value
        except ValueError as exc:
            raise FrameError("invalid_payload", f"frame is not valid JSON: {exc}")
        except RecursionError:
            raise FrameError("invalid_payload", "frame is not valid JSON: nested too deeply")


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


def _json_default(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class MsgpackCodec(Codec):
    name = "msgpack"

    def __init__(self):
        # Imported here, not at module level: JSON users must not need it.
        try:
            import msgpack
        except ImportError:
            raise ImportError(
                "the msgpack codec needs the 'msgpack' package: pip install msgpack"
            )
        self._msgpack = msgpack
        # strict_types: only the exact built-in types are written as they
        # are; any other (a subclass of dict, list, str..., or a tuple) goes
        # through _msgpack_default first. Without it the packer writes a
        # dict subclass's map header from its __len__ and its entries from
        # its items(), and a subclass whose two disagree makes a payload
        # that is not MessagePack (the pool would replace the worker).
        self._packb = msgpack.Packer(use_bin_type=True, autoreset=True, strict_types=True,
                                     default=_msgpack_default).pack
        self._unpackb = msgpack.unpackb

    def encode(self, value):
        return self._packb(value)

    def decode(self, payload):
        try:
            # A map's keys may be integers (what the host writes for a typed
            # map such as HashMap<u32, _>) or other hashable values.
            return self._unpackb(payload, raw=False, strict_map_key=False)
        except UnicodeDecodeError as exc:
            raise FrameError("invalid_utf8", f"frame has a string that is not valid UTF-8: {exc}")
        except (ValueError, TypeError, self._msgpack.UnpackException) as exc:
            # ExtraData, FormatError, StackError and "incomplete input" are
            # all ValueError subclasses in msgpack >= 1.0.
            # StackError (nested too deeply) and FormatError carry no text.
            detail = str(exc) or type(exc).__name__
            raise FrameError("invalid_payload", f"frame is not valid MessagePack: {detail}")
        except RecursionError:
            raise FrameError("invalid_payload", "frame is not valid MessagePack: nested too deeply")


def _msgpack_default(value):
    """What a value of no exact built-in type is written as under
    MessagePack: the exact type it derives from, copied (a tuple is a
    list, as JSON writes it). A dict subclass is copied from its items(),
    which JSON writes too, so that the map's length and entries agree. The
    packer calls this once per value; what it returns is written as is."""
    cls = type(value)
    if issubclass(cls, dict):
        return dict(value.items())
    if issubclass(cls, (list, tuple)):
        return list(value)
    if cls is int:  # an exact int the packer refused: too large
        raise OverflowError("Integer value out of range")
    if issubclass(cls, int):  # an IntEnum, say; bool is exact
        return int.__int__(value)
    if issubclass(cls, float):
        return float.__float__(value)
    if issubclass(cls, str):
        return str.__str__(value)
    if issubclass(cls, (bytes, bytearray)):
        return bytes(memoryview(value))
    raise TypeError(f"can not serialize {cls.__name__!r} object")


def get_codec(name=None):
    """The codec called ``name``; ``None`` reads ``SNAKEPIT_CODEC`` (default json)."""
    if isinstance(name, Codec):
        return name
    if name is None:
        name = os.environ.get("SNAKEPIT_CODEC") or "json"
    name = name.strip().lower()
    if name == "json":
        return JsonCodec()
    if name in ("msgpack", "messagepack"):
        return MsgpackCodec()
    raise ValueError(f"unknown codec {name!r} (expected json or msgpack)")


def encode_frame(codec, value):
    """Length prefix plus encoded payload, ready to write."""
    payload = codec.encode(value)
    return _pack_header(len(payload)) + payload


# --- validation -----------------------------------------------------------

def _is_int(value):
    # bool is an int subclass in Python, but true/false is never an id.
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _require(msg, field, check, what, frame_id=None):
    if field not in msg:
        raise FrameError("missing_field", f"frame lacks field {field!r}", frame_id)
    if not check(msg[field]):
        raise FrameError("wrong_type", f"field {field!r} must be {what}", frame_id)


def _int_id(msg):
    value = msg.get("id")
    return value if _is_int(value) else None


def _check_request(msg):
    frame_id = _int_id(msg)
    if frame_id is not None and frame_id <= 0:
        raise FrameError("wrong_type", "field 'id' must be a positive integer")
    _require(msg, "id", _is_int, "a positive integer")
    _require(msg, "command", lambda v: isinstance(v, str), "a string", frame_id)
    args = msg.get("args")
    if args is not None and not isinstance(args, dict):
        raise FrameError("wrong_type", "field 'args' must be a map", frame_id)


def _check_id_only(msg):
    _require(msg, "id", _is_int, "an integer")


def _check_nothing(msg):
    # A cancel or host_reply whose id is missing or not an integer names
    # nothing running, and one without ``success: true`` is a failed host
    # call: the worker ignores or uses them, it does not refuse them.
    pass


def _check_reply(msg):
    _require(msg, "id", _is_int, "an integer")
    _require(msg, "success", lambda v: v is True or v is False, "a boolean", msg["id"])


def _check_hello(msg):
    _require(msg, "protocol", _is_int, "an integer")


def _check_host_call(msg):
    _require(msg, "id", _is_int, "an integer")
    _require(msg, "request_id", _is_int, "an integer", msg["id"])
    _require(msg, "function", lambda v: isinstance(v, str), "a string", msg["id"])


_TO_WORKER = {
    None: _check_request,
    "request": _check_request,
    "cancel": _check_nothing,
    "host_reply": _check_nothing,
}
_TO_POOL = {
    None: _check_reply,
    "response": _check_reply,
    "hello": _check_hello,
    "chunk": _check_id_only,
    "host_call": _check_host_call,
}


def validate(msg, direction="to_worker"):
    """Check that a decoded payload is a well-formed frame; return its type.

    ``direction`` is ``to_worker`` (what a worker reads) or ``to_pool``
    (what a pool reads; used by the tests and by anyone writing a fake pool).
    Raises FrameError with kind ``wrong_type``/``missing_field``.
    """
    if not isinstance(msg, dict):
        raise FrameError("wrong_type", f"frame payload must be a map, not {type(msg).__name__}")
    kind = msg.get("type")
    table = _TO_WORKER if direction == "to_worker" else _TO_POOL
    check = table.get(kind) if (kind is None or isinstance(kind, str)) else None
    if check is None:
        raise FrameError("wrong_type", f"unknown frame type {kind!r}", _int_id(msg))
    if check is _check_request:
        try:
            check(msg)
        except FrameError as exc:
            exc.request = True
            raise
    else:
        check(msg)
    return kind or ("request" if direction == "to_worker" else "response")


def decode_payload(codec, payload, direction="to_worker"):
    """Decode and validate one payload (without its length prefix)."""
    if not payload:
        raise FrameError("invalid_payload", "frame is empty")
    msg = codec.decode(payload)
    validate(msg, direction)
    return msg


# --- reading and writing --------------------------------------------------

class FrameReader:
    """Splits a byte stream into frame payloads.

    It owns its buffer, so bytes already read survive an exception raised in
    the middle of a read (a SIGINT during a host call must not desync the
    stream, which a BufferedReader can do). ``feed``/``next_frame`` serve an
    event loop; ``read_frame`` blocks on a file descriptor.
    """

    __slots__ = ("fd", "max_size", "_buf", "_skip", "eof")

    def __init__(self, fd=None, max_size=MAX_FRAME_SIZE):
        self.fd = fd
        self.max_size = max_size
        self._buf = bytearray()
        self._skip = 0  # bytes still to drop from an oversized frame
        self.eof = False

    def feed(self, data):
        if self._skip:
            drop = min(self._skip, len(data))
            self._skip -= drop
            data = data[drop:]
        self._buf += data

    def next_frame(self):
        """The next complete payload in the buffer, or None.

        An oversized frame raises FrameError(too_large) once; its payload is
        then skipped as it arrives so that the stream stays in sync.
        """
        buf = self._buf
        if len(buf) < 4 or self._skip:
            return None
        (size,) = _unpack_header(buf)
        if size > self.max_size:
            have = len(buf) - 4
            del buf[:4 + min(have, size)]
            self._skip = size - min(have, size)
            raise FrameError(
                "too_large", f"frame of {size} bytes is larger than the limit of {self.max_size}"
            )
        end = 4 + size
        if len(buf) < end:
            return None
        payload = bytes(buf[4:end])
        del buf[:end]
        return payload

    def pending(self):
        """True when a partial frame is buffered (EOF now means truncation)."""
        return bool(self._buf) or bool(self._skip)

    def read_frame(self, read=None):
        """Block until one payload is read; None on a clean EOF.

        Raises FrameError(truncated) when the stream ends inside a frame and
        FrameError(too_large) for an oversized length prefix. ``read`` is
        ``os.read`` (looked up at each call) or one with its signature
        (call_host's holds SIGINT).
        """
        if read is None:
            read = os.read
        fd = self.fd
        buf = self._buf
        if not buf and not self._skip:
            # Fast path: the whole frame usually arrives in one read.
            data = read(fd, 65536)
            if not data:
                self.eof = True
                return None
            n = len(data)
            if n >= 4:
                (size,) = _unpack_header(data)
                if n == size + 4 and size <= self.max_size:
                    return data[4:]
            self.feed(data)
        while True:
            payload = self.next_frame()
            if payload is not None:
                return payload
            want = 65536
            if self._skip:
                want = min(self._skip, 1 << 20)
            data = read(fd, want)
            if not data:
                self.eof = True
                if self.pending():
                    self._buf.clear()
                    self._skip = 0
                    raise FrameError("truncated", "stream ended inside a frame")
                return None
            self.feed(data)


def read_frame_from(stream, max_size=MAX_FRAME_SIZE):
    """Read one payload from a binary file object (tests, fake pools).

    None on clean EOF; FrameError for truncated or oversized frames.
    """
    header = _read_exactly(stream, 4)
    if not header:
        return None
    if len(header) < 4:
        raise FrameError("truncated", "stream ended inside a frame header")
    (size,) = _unpack_header(header)
    if size > max_size:
        raise FrameError("too_large", f"frame of {size} bytes is larger than the limit of {max_size}")
    payload = _read_exactly(stream, size)
    if len(payload) < size:
        raise FrameError("truncated", "stream ended inside a frame")
    return payload


def _read_exactly(stream, size):
    # Unbuffered (raw) streams may return fewer bytes than asked for.
    data = stream.read(size)
    if data is None or len(data) in (0, size):
        return data or b""
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def write_all(fd, data):
    """Write every byte; os.write may write less to a pipe."""
    written = os.write(fd, data)
    while written < len(data):
        data = memoryview(data)[written:]
        written = os.write(fd, data)
