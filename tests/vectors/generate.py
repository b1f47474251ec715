#!/usr/bin/env python3
"""Writes frames.json: the wire vectors every implementation is tested against.

Run it after changing a case: `python3 tests/vectors/generate.py`. Needs the
`msgpack` package. The output is checked in; tests only read it.
"""
import json
import os
import struct

import msgpack

TS = "2026-11-27T12:24:04.051023Z"

GOOD = [
    # The original Elixir pool's request, keys sorted as it wrote them.
    ("original_request", "to_worker", False,
     {"args": {"test": True}, "command": "ping", "id": 290, "timestamp": TS}),
    ("original_init_ping", "to_worker", False,
     {"args": {"initialization": True, "worker_id": "pool_worker_1_210"},
      "command": "ping", "id": 1, "timestamp": TS}),
    ("request", "to_worker", True,
     {"id": 7, "command": "compute", "args": {"operation": "add", "a": 5, "b": 3}, "timestamp": TS}),
    ("request_all_fields", "to_worker", True,
     {"id": 8, "command": "echo", "args": {"message": "héllo ✓"}, "timestamp": TS,
      "session_id": "user_123", "timeout_ms": 30000, "stream": True,
      "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
    ("request_empty_args", "to_worker", True,
     {"id": 9, "command": "info", "args": {}, "timestamp": TS}),
    ("cancel", "to_worker", True, {"type": "cancel", "id": 8}),
    ("host_reply_ok", "to_worker", True,
     {"type": "host_reply", "id": 4, "success": True, "result": {"model": "gpt"}}),
    ("host_reply_error", "to_worker", True,
     {"type": "host_reply", "id": 5, "success": False,
      "error": {"type": "UnknownFunction", "message": "no host function named nope"}}),
    ("original_response_ok", "to_pool", True,
     {"id": 290, "success": True, "result": {"status": "ok", "echo": {"test": True}}, "timestamp": TS}),
    ("original_response_error_string", "to_pool", True,
     {"id": 291, "success": False, "error": "Unknown command: frobnicate", "timestamp": TS}),
    ("response_ok_no_timestamp", "to_pool", True,
     {"id": 7, "success": True, "result": 8}),
    ("response_ok_float", "to_pool", True,
     {"id": 7, "success": True, "result": 2.5}),
    ("response_ok_null", "to_pool", True,
     {"id": 10, "success": True, "result": None}),
    ("response_error_structured", "to_pool", True,
     {"id": 12, "success": False,
      "error": {"type": "ValueError", "message": "Division by zero",
                "traceback": "Traceback (most recent call last):\n  ...\nValueError: Division by zero\n"}}),
    ("response_cancelled", "to_pool", True,
     {"id": 13, "success": False, "error": {"type": "Cancelled", "message": "request 13 was cancelled"}}),
    ("response_protocol_error", "to_pool", True,
     {"id": 0, "success": False, "error": {"type": "ProtocolError", "message": "frame is not valid JSON"}}),
    ("response_explicit_type", "to_pool", True,
     {"type": "response", "id": 14, "success": True, "result": [1, "two", None, True]}),
    ("hello", "to_pool", True,
     {"type": "hello", "protocol": 1, "pid": 4242, "bridge": "snakepit-python/0.1.0",
      "runtime": "CPython 3.11.7",
      "capabilities": {"max_concurrency": 4, "cancel": True, "sigint": True,
                       "streaming": True, "host_calls": True}}),
    ("hello_minimal", "to_pool", True, {"type": "hello", "protocol": 1}),
    ("chunk", "to_pool", True, {"type": "chunk", "id": 8, "data": {"token": "Par"}}),
    ("host_call", "to_pool", True,
     {"type": "host_call", "id": 4, "request_id": 8, "function": "session.get",
      "args": {"key": "model"}}),
]


def frame(payload: bytes) -> str:
    return (struct.pack(">I", len(payload)) + payload).hex()


def cases():
    out = []
    for name, direction, encode, value in GOOD:
        js = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        out.append({"name": name + "_json", "codec": "json", "direction": direction,
                    "frame_hex": frame(js), "value": value, "encode": encode})
        mp = msgpack.packb(value, use_bin_type=True)
        out.append({"name": name + "_msgpack", "codec": "msgpack", "direction": direction,
                    "frame_hex": frame(mp), "value": value, "encode": encode})
    # Binary data survives MessagePack as bin.
    mp = msgpack.packb({"id": 15, "success": True, "result": b"\x00\x01\xfe\xff"}, use_bin_type=True)
    out.append({"name": "response_binary_msgpack", "codec": "msgpack", "direction": "to_pool",
                "frame_hex": frame(mp),
                "value": {"id": 15, "success": True, "result": {"$bin": "0001feff"}},
                "encode": True})

    good_resp = json.dumps({"id": 1, "success": True, "result": 1}, separators=(",", ":")).encode()
    bad = [
        ("truncated_payload_json", "json", (struct.pack(">I", len(good_resp)) + good_resp[:-3]).hex(), "truncated"),
        ("truncated_header", "json", "0000", "truncated"),
        ("too_large", "json", struct.pack(">I", 64 * 1024 * 1024 + 1).hex(), "too_large"),
        ("invalid_json", "json", frame(b'{"id":1,"success":tru'), "invalid_payload"),
        ("invalid_json_not_object", "json", frame(b"[1,2,3]"), "wrong_type"),
        ("invalid_utf8_json", "json", frame(b'{"id":1,"success":true,"result":"\xff\xfe"}'), "invalid_utf8"),
        ("missing_success", "json", frame(b'{"id":1,"result":1}'), "missing_field"),
        ("missing_id", "json", frame(b'{"success":true,"result":1}'), "missing_field"),
        ("id_is_string", "json", frame(b'{"id":"1","success":true,"result":1}'), "wrong_type"),
        ("success_is_string", "json", frame(b'{"id":1,"success":"yes","result":1}'), "wrong_type"),
        ("unknown_type", "json", frame(b'{"type":"gossip","id":1}'), "wrong_type"),
        ("invalid_msgpack", "msgpack", frame(b"\xc1\x00"), "invalid_payload"),
        ("truncated_msgpack_payload", "msgpack", frame(b"\x83\xa2id\x01"), "invalid_payload"),
        ("missing_success_msgpack", "msgpack", frame(msgpack.packb({"id": 1, "result": 1})), "missing_field"),
        ("id_is_string_msgpack", "msgpack", frame(msgpack.packb({"id": "1", "success": True})), "wrong_type"),
        ("invalid_utf8_msgpack", "msgpack", frame(b"\x83\xa2id\x01\xa7success\xc3\xa6result\xa2\xff\xfe"), "invalid_utf8"),
    ]
    for name, codec, hx, err in bad:
        out.append({"name": name, "codec": codec, "direction": "to_pool",
                    "frame_hex": hx, "error": err})
    return out


def main():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frames.json")
    doc = {"protocol": 1, "max_frame_size": 64 * 1024 * 1024, "cases": cases()}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
