"""For sigint_before_start.rs: `slow` notes its start and its end in the
file `log` names, and sleeps `ms` between them; `pad` (a large string)
makes its request slow to read and decode."""
import time

import snakepit_bridge

w = snakepit_bridge.Worker()


def note(path, what):
    with open(path, "a") as f:
        f.write(what + "\n")


@w.command("slow")
def slow(args, ctx):
    note(args["log"], "start")
    time.sleep(args["ms"] / 1000)
    note(args["log"], "end")
    return {"len": len(args["pad"])}


w.run()
