"""A worker for outside_sessions_doc.rs: session data on the host
(ctx.session), a handler that dies after writing, and a slow handler."""
import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("recall")
def recall(args, ctx):
    return {"pid": os.getpid(), "value": ctx.session.get(args["key"])}


@worker.command("remember")
def remember(args, ctx):
    ctx.session.set(args["key"], args["value"])
    return {"pid": os.getpid()}


@worker.command("set_then_die")
def set_then_die(args, ctx):
    # The host call has answered: the value is in the store before the
    # worker dies in the middle of its call.
    ctx.session.set(args["key"], args["value"])
    os._exit(3)


@worker.command("sleep")
def sleep(args, ctx):
    time.sleep(args["seconds"])
    return {"pid": os.getpid()}


@worker.command("create_program")
def create_program(args, ctx):
    if args.get("fail"):
        raise ValueError("create_program failed on purpose")
    return {"program_id": args["name"], "signature": "question -> answer"}


@worker.command("execute_program")
def execute_program(args, ctx):
    if args.get("input") == "fail":
        raise ValueError("execute_program failed on purpose")
    if args.get("input") == "die":
        os._exit(3)
    return {"pid": os.getpid(), "program_data": args.get("program_data")}


worker.run()
