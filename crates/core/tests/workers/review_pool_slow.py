"""The test worker, started slowly once a flag file exists.

While `REVIEW_SLOW_START_IF_EXISTS` names a file that exists, the worker
sleeps `REVIEW_SLOW_START_SECS` (30 by default) before it runs, so its
init handshake is still under way for that long: a start the pool is in
the middle of (a replacement after a crash, or a recycled worker's).
"""
import os
import runpy
import time

flag = os.environ.get("REVIEW_SLOW_START_IF_EXISTS")
if flag and os.path.exists(flag):
    time.sleep(float(os.environ.get("REVIEW_SLOW_START_SECS", "30")))

runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_worker.py"),
    run_name="__main__",
)
