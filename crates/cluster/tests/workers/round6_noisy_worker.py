"""A worker for crates/cluster/tests/outside_round6.rs.

- At start, when the file named by ROUND6_BROKEN exists, it cannot start:
  it writes 40 lines of about 1,500 bytes to stderr (as a worker that logs
  JSON lines might), then a last short line, and exits 7 before its hello.
- `crash` creates that file (so every later start of this worker fails)
  and dies at once (exit 3) in the middle of the call.
- `echo` answers with its pid.
"""
import os
import sys

broken = os.environ.get("ROUND6_BROKEN")
if broken and os.path.exists(broken):
    for i in range(40):
        sys.stderr.write('{"line": %d, "detail": "%s"}\n' % (i, "x" * 1500))
    sys.stderr.write("round6_noisy_worker: the last line\n")
    sys.stderr.flush()
    sys.exit(7)

import snakepit_bridge  # noqa: E402

worker = snakepit_bridge.Worker()


@worker.command("echo")
def echo(args, ctx):
    return {"pid": os.getpid()}


@worker.command("crash")
def crash(args, ctx):
    with open(broken, "w") as f:
        f.write("broken")
    sys.stderr.flush()
    os._exit(3)


worker.run()
