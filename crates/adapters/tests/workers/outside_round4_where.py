"""A Python worker that says where its bridge was imported from and where
it runs."""

import os

import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command
def where(args):
    return {
        "bridge": os.path.abspath(snakepit_bridge.__file__),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }


worker.run()
