#!/usr/bin/env python3
"""Snakepit's generic Python worker: ping, echo, compute, info.

Runs from a plain checkout: ``python3 generic_worker.py --mode pool-worker``.
"""

import os
import sys

# The bridge package sits next to this script; no install needed.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from snakepit_bridge.generic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
