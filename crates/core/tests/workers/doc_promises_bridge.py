"""A bridge-based worker for `tests/doc_promises.rs`: binary results, and
output written to descriptor 1 by a child process or by `os.write`."""
import os
import subprocess

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("bytes")
def bytes_(args):
    return b"\x00\x01\xfe\xff"


@worker.command("outside_output")
def outside_output(args):
    # Neither goes through `print`: a child process inherits descriptor 1,
    # and `os.write` writes to it directly.
    subprocess.run(["echo", "a child process writing to its stdout"], check=True)
    os.write(1, b"bytes written straight to descriptor 1\n")
    return {"pid": os.getpid()}


@worker.command("pid")
def pid(args):
    return os.getpid()


if __name__ == "__main__":
    worker.run()
