"""A worker for the restart-reason tests (crates/telemetry/tests/restart_reasons.rs).

It fails to start (exit status 3, before its handshake) while the file named
by `FAIL_START_IF_EXISTS` exists; `ping` answers `status` ok and its pid (it is the handshake too); `spawn_escaped`
starts `sleep 300` in a session of its own, out of the worker's process
group, as a leftover for the sweep to find.
"""
import os
import subprocess
import sys

marker = os.environ.get("FAIL_START_IF_EXISTS")
if marker and os.path.exists(marker):
    sys.exit(3)

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("ping")
def ping(args, ctx):
    return {"status": "ok", "pid": os.getpid()}


@worker.command("spawn_escaped")
def spawn_escaped(args, ctx):
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    return {"child_pid": child.pid}


worker.run()
