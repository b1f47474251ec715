"""A worker without the bridge that sends chunks whether or not the caller
asked for a stream (the bridges do not: they check the request's `stream`).

It declares `streaming` in its hello. `chunks` sends `n` chunk frames
`{"i": i}` for its request, then the response `{"n": n, "stream": <the
request's stream field>, "pid": <pid>}`. `pid` answers its pid.
"""
import os
import sys

from raw_frames import read, write




if os.environ.get("SNAKEPIT_CODEC", "json") != "json":
    sys.exit("this worker speaks JSON only")

write({"type": "hello", "protocol": 1, "pid": os.getpid(),
       "capabilities": {"max_concurrency": 1, "streaming": True}})

while True:
    req = read()
    if req is None:
        break
    if req.get("type") not in (None, "request"):
        continue
    rid, command, args = req["id"], req["command"], req.get("args", {})
    if command == "chunks":
        n = args["n"]
        for i in range(n):
            write({"type": "chunk", "id": rid, "data": {"i": i}})
        write({"id": rid, "success": True,
               "result": {"n": n, "stream": req.get("stream", False), "pid": os.getpid()}})
    elif command in ("ping", "pid"):
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
    else:
        write({"id": rid, "success": False,
               "error": {"type": "UnknownCommand", "message": "Unknown command: " + command}})
