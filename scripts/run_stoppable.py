"""Exec a command with SIGINT/SIGTERM restored to their defaults.

A process started with `&` from a non-interactive shell inherits SIGINT as ignored, and `dagster dev`
maps SIGTERM onto its SIGINT handler, so such a server cannot be stopped with `kill`. Launching it
through this wrapper makes `kill -TERM` work again.
"""

import os
import signal
import sys

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: run_stoppable.py COMMAND [ARGS...]")
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execvp(sys.argv[1], sys.argv[1:])  # noqa: S606 - exec of the caller's own command line
