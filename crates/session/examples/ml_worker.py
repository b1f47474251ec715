"""The worker side of examples/ml_workflow.rs: programs in the style of
DSPy (a signature such as "question -> answer", a model, its settings).

The worker keeps nothing between calls: `create_program` describes the
program, the host stores that description in the session, and
`execute_program` gets it back as `program_data`, so any worker can run any
session's program. The "model" is a small lookup table, standing in for a
real one.
"""
import itertools
import os

import snakepit_bridge

worker = snakepit_bridge.Worker()
_ids = itertools.count(1)

KNOWLEDGE = {
    "what is the capital of france?": "Paris",
    "what is the capital of japan?": "Tokyo",
    "how many legs does a spider have?": "8",
}


def parse_signature(text):
    if "->" not in text:
        raise ValueError("a signature looks like 'question -> answer', got %r" % text)
    inputs, outputs = text.split("->", 1)
    fields = lambda s: [f.strip() for f in s.split(",") if f.strip()]
    return {"inputs": fields(inputs), "outputs": fields(outputs)}


@worker.command("create_program")
def create_program(args, ctx):
    signature = parse_signature(args["signature"])
    program_id = "prog_%d_%d" % (os.getpid(), next(_ids))
    return {
        "program_id": program_id,
        "signature": signature,
        "program_type": "predict",
        "model": args.get("model"),
    }


@worker.command("execute_program")
def execute_program(args, ctx):
    program = args.get("program_data")
    if program is None:
        raise KeyError("program %r is not in session %r" % (args.get("program_id"), args.get("session_id")))
    inputs = args.get("input") or {}
    signature = program["signature"]
    missing = [f for f in signature["inputs"] if f not in inputs]
    if missing:
        raise ValueError("missing inputs: %s" % ", ".join(missing))
    question = str(inputs[signature["inputs"][0]]).strip().lower()
    answer = KNOWLEDGE.get(question, "I don't know")
    history = ctx.session.get("history") or []
    history.append({"q": inputs[signature["inputs"][0]], "a": answer})
    ctx.session.set("history", history)
    return {
        "program_id": program["program_id"],
        "outputs": {signature["outputs"][0]: answer},
        "model": program["config"].get("model"),
        "temperature": program["config"].get("temperature"),
        "executed_by": os.getpid(),
    }


@worker.command("ping")
def ping(args, ctx):
    return {"status": "ok"}


worker.run()
