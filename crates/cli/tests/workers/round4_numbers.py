"""A worker whose `number` returns 10 to the power `exp`, a Python integer
of any size (outside_cli_round4.rs)."""

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("number")
def number(args):
    return {"n": 10 ** int(args["exp"])}


worker.run()
