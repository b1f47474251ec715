"""bridges/python/README.md, "Preloading": the README's example, as
written, between a prelude that defines the functions it calls (each notes
its process in the file named by OPR_NOTES) and a command that reports what
the serving process holds (tests/outside_python_readme.rs)."""

import os
import threading
import time

import snakepit_bridge

NOTES = os.environ["OPR_NOTES"]
DB = {}
METRICS = {}


def note(what):
    with open(NOTES, "a") as f:
        f.write("%s %d\n" % (what, os.getpid()))


def load_model(path):
    note("load_model")
    return {"model": path, "loaded_in": os.getpid()}


def connect_to_database():
    note("connect_to_database")
    DB["pid"] = os.getpid()


def start_metrics_thread():
    note("start_metrics_thread")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="metrics", daemon=True)
    t.start()
    METRICS["thread"] = t
    METRICS["pid"] = os.getpid()


# --- the README's block, verbatim ------------------------------------------
MODEL = load_model("model.bin")      # once, in the template
worker = snakepit_bridge.Worker()


@worker.after_fork
def per_process():                   # or per_process(worker)
    connect_to_database()            # sockets do not survive a fork
    start_metrics_thread()           # nor do threads
# --- end of the README's block ----------------------------------------------


@worker.command("state")
def state(args):
    time.sleep(args.get("ms", 0) / 1000.0)  # held, so that every worker gets one
    t = METRICS.get("thread")
    return {
        "pid": os.getpid(),
        "model": MODEL,
        "db_pid": DB.get("pid"),
        "metrics_pid": METRICS.get("pid"),
        "metrics_alive": bool(t is not None and t.is_alive()),
    }


if __name__ == "__main__":
    worker.run()
    note("after_run")  # a forked worker never gets here
