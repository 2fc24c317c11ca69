"""What every part of the ``redis-rpc`` command shares: its name, exit statuses, log levels and format, signals, error line."""

from __future__ import annotations

import logging
import signal
import sys

from redis_rpc._cli.app import LOG_FORMAT

PROG = "redis-rpc"
# 1 is a failure at run time; 2, as with argparse, a command that cannot
# work as given, which includes a target that does not load; 130 is the
# shell's status for a process ended by Ctrl-C.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LOG_LEVELS = {
    name: getattr(logging, name)
    for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
}
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# App.run()'s format with the process id, so that the lines of the
# supervisor and of each worker, which share one stderr, can be told apart.
CLI_LOG_FORMAT = LOG_FORMAT.replace("%(name)s", "%(name)s [pid %(process)d]", 1)


def error(message: str) -> None:
    """Print *message* as the command's one-line error."""
    print(f"{PROG}: error: {message}", file=sys.stderr)  # noqa: T201 - the command's own output
