"""A worker whose `fail` raises an error whose message and traceback
carry terminal control sequences: a screen clear, a carriage return that
would overwrite the line, a right-to-left override (outside_cli_round5.rs)."""

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("fail")
def fail(args):
    raise ValueError("bad input \x1b[2J\x1b[31mred\rOVERWRITTEN \u202eesrever")


worker.run()
