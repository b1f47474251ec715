"""A worker that prints on every call, on its stdout and its stderr, lines
that look like JSON results (outside_cli_round4.rs)."""

import sys

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("chatter")
def chatter(args):
    n = int(args.get("n", 1))
    for i in range(n):
        print('{"round4 chatter on stdout": %d}' % i)
        print('{"round4 chatter on stderr": %d}' % i, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    return {"n": n, "said": 2 * n}


worker.run()
