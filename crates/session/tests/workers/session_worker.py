"""A worker whose session state lives on the host (ctx.session)."""
import os

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("remember")
def remember(args, ctx):
    ctx.session.set(args["key"], args["value"])
    return {"pid": os.getpid(), "session_id": ctx.session_id}


@worker.command("recall")
def recall(args, ctx):
    return {"pid": os.getpid(), "value": ctx.session.get(args["key"])}


@worker.command("forget")
def forget(args, ctx):
    return {"pid": os.getpid(), "deleted": ctx.session.delete(args["key"])}


@worker.command("program")
def program(args, ctx):
    if args.get("global"):
        return ctx.call_host("session.get_global_program", {"program_id": args["program_id"]})
    return ctx.call_host("session.get_program", {"program_id": args["program_id"]})


@worker.command("sleep")
def sleep(args, ctx):
    import time
    time.sleep(args["seconds"])
    return {"pid": os.getpid()}


@worker.command("count")
def count(args, ctx):
    n = (ctx.session.get("n") or 0) + 1
    ctx.session.set("n", n)
    return n


worker.run()
