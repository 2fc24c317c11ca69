"""The ``redis-rpc`` command: serve an application in one or more processes, ping Redis, describe a service.

``redis-rpc run`` imports the application in the process that serves it,
never in a parent that forks afterwards: a broker started before a fork
cannot serve in the child (see the README on forking). With several
workers, a supervisor starts each one as a fresh interpreter
(``python -m redis_rpc run TARGET --worker N``) that imports the target
itself, so the supervisor never imports it at all. The supervisor owns
the signals: it forwards SIGINT and SIGTERM to the workers and waits for
them, reloads them on SIGHUP (new ones first), restarts a worker that dies, later each time it dies again so that
one that cannot start does not spin, and stops them all when one cannot
load the target, or keeps failing before it ever served. Each worker says
on a pipe of its own when it serves, or why it could not start, since a
restart cannot cure what keeps a service from starting (refused
credentials, say), and a supervisor that restarted it for ever would hide
that.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import threading
from typing import TYPE_CHECKING

from redis_rpc import __version__
from redis_rpc._broker import RedisBroker
from redis_rpc._cli import asyncapi
from redis_rpc._cli.console import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    LOG_LEVELS,
    PROG,
    error,
)
from redis_rpc._cli.supervisor import Supervisor
from redis_rpc._cli.target import TargetError, load_target
from redis_rpc._cli.worker import serve
from redis_rpc._io.server import RedisBackend
from redis_rpc.errors import NoSubscriberError, RedisRPCError, SetupError

if TYPE_CHECKING:
    from collections.abc import Sequence

# ping: how often redis-py checks an idle connection; ping uses it only once.
PING_HEALTH_CHECK_INTERVAL = 30.0
# health: how long the command waits for its broker to close before it
# exits all the same; closing is quick unless Redis is stalled.
HEALTH_CLOSE_WAIT = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``redis-rpc`` command line with *argv*; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "ping":
            return ping(args.url, timeout=args.timeout)
        if args.command == "health":
            return health(args.url, args.channel, timeout=args.timeout)
        if args.command == "docs":
            return docs_gen(args.target, out=args.out, yaml=args.yaml)
        if args.workers > 1 and args.worker is None:
            return Supervisor(args.target, args.workers, args.log_level).run()
        return serve(
            args.target,
            log_level=args.log_level,
            worker=args.worker,
            supervisor=args.supervisor,
            status_fd=args.status_fd,
        )
    except (
        KeyboardInterrupt
    ):  # Ctrl-C before a service took SIGINT over: nothing to drain
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a redis_rpc application, check that Redis answers, probe a service's health, or describe it in AsyncAPI.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="serve an App or a RedisBroker until SIGINT or SIGTERM",
        description=(
            "Import MODULE:ATTR, a redis_rpc.App or a redis_rpc.RedisBroker, in each "
            "worker process and serve it until SIGINT or SIGTERM; handlers that are "
            "running then finish first. The current directory is importable."
        ),
    )
    run.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="where the App or RedisBroker is, for example myservice.main:app",
    )
    run.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help=(
            "worker processes (default 1: serve in this process); with more, a "
            "supervisor restarts any that dies"
        ),
    )
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=list(LOG_LEVELS),
        default=None,
        metavar="LEVEL",
        help=(
            "DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO, or the "
            "application's own logging set-up)"
        ),
    )
    # Set by the supervisor on the workers it starts.
    run.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--supervisor", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--status-fd", type=int, default=None, help=argparse.SUPPRESS)

    ping_ = commands.add_parser(
        "ping",
        help="check that Redis answers and print its version",
        description=(
            "Send PING to the Redis server at URL and print its version; exit with "
            "0 if it answered and 1 if not."
        ),
    )
    ping_.add_argument(
        "url", metavar="URL", help="for example redis://localhost:6379/0"
    )
    ping_.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the connection and for each answer (default 5)",
    )
    health_ = commands.add_parser(
        "health",
        help="ask a running service whether it is healthy (a readiness probe)",
        description=(
            "Ask the service that answers health checks on CHANNEL (see "
            "RedisBroker.serve_health()) whether Redis and all its parts are up; "
            "exit with 0 if it says so, and 1, printing what is down, if not or if "
            "nobody answers within the timeout."
        ),
    )
    health_.add_argument(
        "url",
        metavar="URL",
        help="the Redis the service uses, such as redis://localhost:6379/0",
    )
    health_.add_argument(
        "channel",
        metavar="CHANNEL",
        help="the channel the service answers health checks on",
    )
    health_.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the answer (default 5)",
    )
    docs = commands.add_parser(
        "docs",
        help="describe an application: its channels and messages in AsyncAPI",
        description="Describe an application without starting it.",
    )
    docs_commands = docs.add_subparsers(
        dest="docs_command", required=True, metavar="COMMAND"
    )
    gen = docs_commands.add_parser(
        "gen",
        help="write the AsyncAPI 3.0 document of an App or a RedisBroker",
        description=(
            "Import MODULE:ATTR, a redis_rpc.App or a redis_rpc.RedisBroker, and write "
            "an AsyncAPI 3.0 document of its subscribers and publishers: channels "
            "with their Redis transport, message schemas from the handlers' "
            "annotations, and each handler's reply and error reply. Nothing connects "
            "to Redis. The current directory is importable."
        ),
    )
    gen.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="where the App or RedisBroker is, for example myservice.main:app",
    )
    gen.add_argument(
        "--out",
        metavar="PATH",
        default=None,
        help="the file to write (default asyncapi.json, or asyncapi.yaml with --yaml); - for stdout",
    )
    gen.add_argument(
        "--yaml",
        action="store_true",
        help="write YAML instead of JSON (needs PyYAML)",
    )
    return parser


def _close_within(broker: RedisBroker, seconds: float) -> None:
    """Close *broker*, waiting for it at most *seconds*, since the command exits right after.

    Against a stalled Redis its threads may be in a connection attempt for
    up to ``socket_timeout``, which ``close()`` would wait out; a probe must
    answer within its timeout, and exiting ends them anyway.
    """
    closer = threading.Thread(
        target=broker.close, name="redis-rpc:health-close", daemon=True
    )
    closer.start()
    closer.join(seconds)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, not {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        msg = f"must be positive, not {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def docs_gen(target: str, *, out: str | None, yaml: bool) -> int:
    """Write the AsyncAPI document of the App or broker at *target* to *out*; return the exit status."""
    if yaml and importlib.util.find_spec("yaml") is None:
        error("--yaml needs PyYAML: pip install pyyaml, or leave out --yaml for JSON.")
        return EXIT_USAGE
    try:
        app = load_target(target)
    except TargetError as exc:
        error(str(exc))
        return EXIT_USAGE
    text = asyncapi.dump(asyncapi.document(app.broker, title=target), yaml=yaml)
    path = out or ("asyncapi.yaml" if yaml else "asyncapi.json")
    if path == "-":
        print(text, end="")  # noqa: T201 - the command's own output
        return EXIT_OK
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        error(f"cannot write {path}: {exc.strerror or exc}")
        return EXIT_FAILURE
    print(f"Wrote {os.path.abspath(path)}")  # noqa: T201 - the command's own output
    return EXIT_OK


def ping(url: str, *, timeout: float) -> int:
    """Print the version of the Redis server at *url* if it answers PING; return the exit status.

    The URL never appears in the output: it may carry a password.
    """
    try:
        connection = RedisBackend(
            url,
            socket_timeout=timeout,
            health_check_interval=PING_HEALTH_CHECK_INTERVAL,
            options={"socket_connect_timeout": timeout},
        )
    except SetupError as exc:
        error(str(exc))
        return EXIT_USAGE
    try:
        connection.ping()
        version = connection.server_version()
    except RedisRPCError as exc:
        error(str(exc))
        return EXIT_FAILURE
    finally:
        connection.close()
    print(f"PONG from Redis {version} at {connection.address}")  # noqa: T201 - the command's own output
    return EXIT_OK


def health(url: str, channel: str, *, timeout: float) -> int:
    """Ask the service answering on *channel* whether it is healthy; return the exit status.

    Prints ``healthy``, or each problem the service reported, or why there
    was no answer. The URL never appears in the output.
    """
    try:
        # No Redis call may take longer than the whole probe.
        broker = RedisBroker(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            poll_interval=min(0.2, timeout / 4),
        )
    except SetupError as exc:
        error(str(exc))
        return EXIT_USAGE
    try:
        answer = broker.request(None, channel=channel, timeout=timeout).decode()
    except NoSubscriberError:
        # Its message advises request(fail_fast=False), which this command
        # does not take: the advice for a probe is where the answer should be.
        error(
            f"no health answer on {channel!r}: nobody subscribes to it. Is the service"
            f" running, and does it call broker.serve_health({channel!r}) before"
            " start()?"
        )
        return EXIT_FAILURE
    except RedisRPCError as exc:
        error(f"no health answer on {channel!r}: {exc}")
        return EXIT_FAILURE
    finally:
        _close_within(broker, HEALTH_CLOSE_WAIT)
    if not isinstance(answer, dict) or not isinstance(answer.get("healthy"), bool):
        error(
            f"{channel!r} answered something that is not a health report: {answer!r:.200}"
        )
        return EXIT_FAILURE
    if answer["healthy"]:
        print("healthy")  # noqa: T201 - the command's own output
        return EXIT_OK
    for problem in answer.get("problems") or ["unhealthy, for no reason given"]:
        print(f"unhealthy: {problem}")  # noqa: T201 - the command's own output
    return EXIT_FAILURE
