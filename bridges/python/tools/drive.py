"""Drives one generic Python worker directly and reports its cost per call.

The figures for the bridge's cost of a call written ahead in docs/speed.md
come from this script: it starts ``generic_worker.py`` as a pool would
(protocol, codec and worker id in the environment), warms it up, then sends
N pings either one at a time (``lockstep``) or with up to DEPTH written
ahead (``pipe``), as the pool does with ``pipeline_depth``. It prints the
worker's CPU time per call (from ``/proc/PID/schedstat``) and the wall time
per call.

    python3 bridges/python/tools/drive.py bridges/python pipe 50000 16

With ``WRAP`` set, the worker runs under that command, for instance
``WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/w.cg"``: the
difference of the totals of two runs (say 1,000 and 3,000 calls) over the
difference of their calls is the worker's instructions per call.
"""

import json
import os
import struct
import subprocess
import sys
import time


def main():
    bridge, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    depth = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    if mode not in ("lockstep", "pipe"):
        sys.exit("mode is lockstep or pipe")
    env = dict(os.environ, SNAKEPIT_PROTOCOL="1", SNAKEPIT_CODEC="json",
               SNAKEPIT_WORKER_ID="w0", PYTHONPATH=bridge)
    prefix = os.environ.get("WRAP", "").split()
    worker = subprocess.Popen(
        prefix + [sys.executable, "-u", os.path.join(bridge, "generic_worker.py"),
                  "--mode", "pool-worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
    wfd, rfd = worker.stdin.fileno(), worker.stdout.fileno()
    buf = bytearray()

    def read_frame():
        nonlocal buf
        while True:
            if len(buf) >= 4:
                (size,) = struct.unpack(">I", buf[:4])
                if len(buf) >= 4 + size:
                    frame = bytes(buf[4:4 + size])
                    del buf[:4 + size]
                    return frame
            data = os.read(rfd, 65536)
            if not data:
                sys.exit("the worker closed its stdout")
            buf += data

    def frame(i):
        body = json.dumps({"id": i, "command": "ping", "args": {},
                           "timestamp": "2026-12-01T00:00:00.000000Z"},
                          separators=(",", ":")).encode()
        return struct.pack(">I", len(body)) + body

    def cpu_ns():
        try:
            with open(f"/proc/{worker.pid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError):
            return 0

    read_frame()  # hello
    warm = 500
    frames = [frame(i + 1) for i in range(n + warm)]
    for i in range(warm):
        os.write(wfd, frames[i])
        read_frame()
    c0, t0 = cpu_ns(), time.perf_counter()
    if mode == "lockstep":
        for i in range(n):
            os.write(wfd, frames[warm + i])
            read_frame()
    else:
        sent = got = 0
        while got < n:
            while sent < n and sent - got < depth:
                os.write(wfd, frames[warm + sent])
                sent += 1
            read_frame()
            got += 1
    c1, t1 = cpu_ns(), time.perf_counter()
    print(f"{mode} depth={depth}: worker CPU {(c1 - c0) / n / 1000:.2f} us/call, "
          f"wall {(t1 - t0) / n * 1e6:.2f} us/call")
    worker.stdin.close()
    worker.wait()


if __name__ == "__main__":
    main()
