"""A hostile preload template for crates/core/tests/outside_round5_hooks.rs.

As a template (SNAKEPIT_PRELOAD=1) it first floods the pool with
`R5_FLOOD` `exited` reports for pids that are none of its workers (it has
forked none yet), then serves as an ordinary template: its `ready` comes
after the whole flood on the same ordered socket. Forked, it is an
ordinary bridge worker.
"""
import json
import os
import socket

if os.environ.get("SNAKEPIT_PRELOAD") == "1":
    count = int(os.environ.get("R5_FLOOD", "0"))
    sock = socket.socket(fileno=os.dup(0))
    base = 3_000_000_000
    for i in range(count):
        sock.send(json.dumps({"op": "exited", "pid": base + i, "status": 0}).encode())
    sock.detach()

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("pid")
def pid(args, ctx):
    return {"pid": os.getpid()}


worker.run()
