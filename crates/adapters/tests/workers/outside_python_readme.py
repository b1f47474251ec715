import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("greet")
def greet(args):
    # print() is safe: the bridge sends it to stderr (the pool's log).
    print("greeting", args.get("name"))
    return {"greeting": "Hello, %s!" % args.get("name", "world")}


@worker.command("count")
def count(args, ctx):
    # Partial results reach callers that asked for a stream.
    for i in range(1, args["to"] + 1):
        ctx.emit(i)
    return {"counted": args["to"]}


@worker.command("divide")
def divide(args, ctx):
    ctx.logger.info("dividing %s by %s", args["a"], args["b"])
    # An exception becomes a failed reply:
    # {"type": "ZeroDivisionError", "message": "division by zero", "traceback": "..."}
    return args["a"] / args["b"]


if __name__ == "__main__":
    worker.run()  # serves until the pool closes stdin, then exits 0
