"""A worker whose `paint` writes terminal control sequences to its stderr
and stdout (through `print`, which the bridge sends to stderr): a screen
clear, a colour, a carriage return that would overwrite the line, a
right-to-left override (outside_cli_round6.rs)."""

import sys

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("paint")
def paint(args):
    sys.stderr.write("r6 stderr \x1b[2J\x1b[31mred\x07 \u202eesrever\n")
    sys.stderr.flush()
    print("r6 print \x1b]0;title\x07\x1b[0m")
    return {"painted": True}


worker.run()
