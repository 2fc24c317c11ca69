"""The ``redis-rpc`` command: serve an application in one or more processes, and ping Redis.

``redis-rpc run`` imports the application in the process that serves it,
never in a parent that forks afterwards: a broker started before a fork
cannot serve in the child (see the README on forking). With several
workers, a supervisor starts each one as a fresh interpreter
(``python -m redis_rpc run TARGET --worker N``) that imports the target
itself, so the supervisor never imports it at all. The supervisor owns
the signals: it forwards SIGINT and SIGTERM to the workers and waits for
them, restarts a worker that dies, later each time it dies again so that
one that cannot start does not spin, and stops them all when one cannot
load the target.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from redis_rpc import __version__
from redis_rpc._app import App, _default_logging
from redis_rpc._backoff import Backoff
from redis_rpc._broker import RedisBroker
from redis_rpc._redis import Connection
from redis_rpc.errors import RedisRPCError, SetupError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

logger = logging.getLogger(__name__)

PROG = "redis-rpc"
# 1 is a failure at run time; 2, as with argparse, a command that cannot
# work as given, which includes a target that does not load; 130 is the
# shell's status for a process ended by Ctrl-C.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LOG_LEVELS = {
    name: getattr(logging, name)
    for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
}
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# How often the supervisor looks at its workers: how late it notices a death.
SUPERVISE_INTERVAL = 0.2
# How long the supervisor waits for its workers to stop after forwarding a
# signal: the broker's default graceful_timeout (15 s), plus room for the
# application's shutdown hooks.
STOP_TIMEOUT = 30.0
# How long it waits for a worker it had to kill.
KILL_TIMEOUT = 5.0
# The first restart comes within half a second, later ones up to 30 s
# apart: quick after a one-off crash, slow for a worker that can never start.
RESTART_BACKOFF = Backoff(start=0.5, cap=30.0)
# A worker that served this long before it died died of something new: its
# restart is quick again.
STABLE_AFTER = 60.0
# How often a worker checks that its supervisor is still there.
ORPHAN_CHECK_INTERVAL = 1.0
# ping: how often redis-py checks an idle connection; ping uses it only once.
PING_HEALTH_CHECK_INTERVAL = 30.0


class TargetError(Exception):
    """The target of ``run`` cannot be loaded: the command was given wrong, so one line says why."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``redis-rpc`` command line with *argv*; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "ping":
            return ping(args.url, timeout=args.timeout)
        if args.command == "health":
            return health(args.url, args.channel, timeout=args.timeout)
        if args.workers > 1 and args.worker is None:
            return Supervisor(args.target, args.workers, args.log_level).run()
        return serve(
            args.target,
            log_level=args.log_level,
            worker=args.worker,
            supervisor=args.supervisor,
        )
    except (
        KeyboardInterrupt
    ):  # Ctrl-C before a service took SIGINT over: nothing to drain
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a redis_rpc application, check that Redis answers, or probe a service's health.",
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
    return parser


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


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)  # noqa: T201 - the command's own output


def ping(url: str, *, timeout: float) -> int:
    """Print the version of the Redis server at *url* if it answers PING; return the exit status.

    The URL never appears in the output: it may carry a password.
    """
    try:
        connection = Connection(
            url,
            socket_timeout=timeout,
            health_check_interval=PING_HEALTH_CHECK_INTERVAL,
            options={"socket_connect_timeout": timeout},
        )
    except SetupError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        connection.ping()
        version = connection.server_version()
    except RedisRPCError as exc:
        _error(str(exc))
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
        broker = RedisBroker(
            url,
            socket_timeout=max(timeout, 1.0) + 1.0,
            socket_connect_timeout=timeout,
            poll_interval=min(0.2, timeout / 2),
        )
    except SetupError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        answer = broker.request(None, channel=channel, timeout=timeout).decode()
    except RedisRPCError as exc:
        _error(f"no health answer on {channel!r}: {exc}")
        return EXIT_FAILURE
    finally:
        broker.close()
    if not isinstance(answer, dict) or not isinstance(answer.get("healthy"), bool):
        _error(
            f"{channel!r} answered something that is not a health report: {answer!r:.200}"
        )
        return EXIT_FAILURE
    if answer["healthy"]:
        print("healthy")  # noqa: T201 - the command's own output
        return EXIT_OK
    for problem in answer.get("problems") or ["unhealthy, for no reason given"]:
        print(f"unhealthy: {problem}")  # noqa: T201 - the command's own output
    return EXIT_FAILURE


def split_target(target: str) -> tuple[str, str]:
    """``("package.module", "attr")`` from ``"package.module:attr"``.

    Raises:
        TargetError: *target* does not have that shape.
    """
    module_name, colon, attr = target.partition(":")
    if not (colon and module_name and attr):
        msg = f"The target must look like package.module:attr, not {target!r}."
        raise TargetError(msg)
    return module_name, attr


def load_target(target: str) -> App:
    """Import ``package.module:attr`` and return its ``App``; a ``RedisBroker`` is put in one.

    The current directory is importable, as with ``python -m``. *attr* may
    be dotted (``module:holder.app``).

    Raises:
        TargetError: *target* is malformed, its module does not exist, the
            module has no such attribute, or it is neither an ``App`` nor a
            ``RedisBroker``.
        Exception: Anything else that importing the module raised, such as
            a module that it imports and that is missing: a bug in the
            application deserves its traceback.
    """
    module_name, attr = split_target(target)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise  # the module exists, and something it imports does not
        msg = (
            f"Cannot import {module_name!r}: there is no module named {exc.name!r} "
            f"(run from the directory that holds it, or add that to PYTHONPATH)."
        )
        raise TargetError(msg) from None
    found: object = module
    for name in attr.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            msg = f"Module {module_name!r} has no attribute {attr!r}."
            raise TargetError(msg) from None
    if isinstance(found, App):
        return found
    if isinstance(found, RedisBroker):
        return App(found)
    msg = f"{target} is of type {type(found).__name__}, not a redis_rpc.App or a redis_rpc.RedisBroker."
    raise TargetError(msg)


def serve(
    target: str,
    *,
    log_level: str | None = None,
    worker: int | None = None,
    supervisor: int | None = None,
) -> int:
    """Load *target* and run it in this process until SIGINT or SIGTERM; return the exit status.

    Call from the main thread of a process that is about to exit: signals
    that arrive once the service has stopped are ignored, so that a late
    one cannot interrupt the exit with a traceback.

    Args:
        log_level: A name from ``LOG_LEVELS``, or ``None`` for the default
            set-up of ``App.run()``.
        worker: This process's number, when a supervisor started it.
        supervisor: The supervisor's pid: the service stops if it goes.
    """
    if worker is not None:
        # The supervisor forwards SIGINT. Until the App takes it over, a
        # worker just ends, without a KeyboardInterrupt traceback.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        app = load_target(target)
    except TargetError as exc:
        _error(str(exc))
        return EXIT_USAGE
    watch = None if supervisor is None else _OrphanWatch(app, supervisor)
    try:
        with _default_logging(None if log_level is None else LOG_LEVELS[log_level]):
            if worker is not None:
                logger.info(
                    "Worker %d (pid %d) serving %s", worker, os.getpid(), target
                )
            app.run()
    except RedisRPCError as exc:  # the broker could not start: one line says why
        _error(str(exc))
        return EXIT_FAILURE
    finally:
        # App.run() put back the handlers it replaced; a second Ctrl-C, or the
        # terminal's copy of a signal the supervisor also forwards, lands here.
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if watch is not None:
            watch.stop()
    return EXIT_OK


class _OrphanWatch:
    """Stops a worker's service when its supervisor is gone, so that no worker outlives it.

    A supervisor killed with SIGKILL forwards nothing; its workers are then
    adopted by another process, which shows as a new parent pid.
    """

    def __init__(self, app: App, supervisor: int) -> None:
        self._app = app
        self._supervisor = supervisor
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="redis_rpc:cli:supervisor_watch", daemon=True
        )
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(ORPHAN_CHECK_INTERVAL):
            if os.getppid() != self._supervisor:
                logger.warning(
                    "The supervisor (pid %d) has gone; stopping", self._supervisor
                )
                self._app.exit()
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(ORPHAN_CHECK_INTERVAL)


class _Worker:
    """One worker's place: its current process, and when and how soon to restart it."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0  # time.monotonic() when the process started
        self.starts = 0  # processes started so far
        self.backoff = RESTART_BACKOFF
        self.restart_at: float | None = None  # time.monotonic() to start it again


class Supervisor:
    """Keeps *workers* processes serving *target* until SIGINT or SIGTERM.

    ``run()`` belongs to the main thread, which receives the signals.
    """

    def __init__(self, target: str, workers: int, log_level: str | None) -> None:
        self._target = target
        self._log_level = log_level
        self._workers = [_Worker(number) for number in range(1, workers + 1)]
        self._signals: list[int] = []  # appended by the signal handler
        self._woken = threading.Event()  # a signal came

    def run(self) -> int:
        """Start the workers, keep them running, stop them on a signal; return the exit status.

        The status is 0 when every worker stopped cleanly, 1 when one did
        not, and 2 when a worker could not load the target.
        """
        try:
            split_target(self._target)  # the shape only: the workers import it
        except TargetError as exc:
            _error(str(exc))
            return EXIT_USAGE
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        try:
            with _default_logging(
                None if self._log_level is None else LOG_LEVELS[self._log_level]
            ):
                return self._supervise()
        finally:
            for signum in _SIGNALS:  # the workers have gone: a late signal is moot
                signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)
        self._woken.set()

    def _supervise(self) -> int:
        logger.info(
            "Supervisor serving %s with %d workers", self._target, len(self._workers)
        )
        for worker in self._workers:
            self._start(worker)
        while not self._signals:
            self._woken.wait(SUPERVISE_INTERVAL)
            for worker in self._workers:
                if self._check(worker) == EXIT_USAGE:
                    logger.error(
                        "Worker %d could not load %s; stopping the others",
                        worker.number,
                        self._target,
                    )
                    self._stop(signal.SIGTERM)
                    return EXIT_USAGE
            if all(w.process is None and w.restart_at is None for w in self._workers):
                logger.info("Every worker has exited by itself")
                return EXIT_OK
        return EXIT_OK if self._stop(self._signals[0]) else EXIT_FAILURE

    def _command(self, worker: _Worker) -> list[str]:
        command = [sys.executable, "-m", "redis_rpc", "run", self._target]
        command += ["--worker", str(worker.number), "--supervisor", str(os.getpid())]
        if self._log_level is not None:
            command += ["--log-level", self._log_level]
        return command

    def _start(self, worker: _Worker) -> None:
        worker.restart_at = None
        worker.started = time.monotonic()
        try:
            # Inherits the working directory, the environment and the output.
            worker.process = subprocess.Popen(self._command(worker))  # noqa: S603 - our own interpreter and arguments
        except OSError:
            logger.exception("Cannot start worker %d", worker.number)
            self._schedule_restart(worker)
            return
        logger.info(
            "%s worker %d (pid %d)",
            "Restarted" if worker.starts else "Started",
            worker.number,
            worker.process.pid,
        )
        worker.starts += 1

    def _schedule_restart(self, worker: _Worker) -> float:
        now = time.monotonic()
        if now - worker.started >= STABLE_AFTER:
            worker.backoff = RESTART_BACKOFF
        delay = worker.backoff.delay()
        worker.backoff = worker.backoff.after_failure()
        worker.restart_at = now + delay
        return delay

    def _check(self, worker: _Worker) -> int | None:
        """Restart *worker* if it is due; return its exit status if it has just exited."""
        if worker.process is None:
            if worker.restart_at is not None and time.monotonic() >= worker.restart_at:
                self._start(worker)
            return None
        status = worker.process.poll()
        if status is None:
            return None
        pid, worker.process = worker.process.pid, None
        if status == EXIT_OK:
            logger.info(
                "Worker %d (pid %d) exited by itself; not restarting it",
                worker.number,
                pid,
            )
        elif status != EXIT_USAGE:  # that one said why, and a restart would not help
            delay = self._schedule_restart(worker)
            logger.error(
                "Worker %d (pid %d) %s; restarting it in %.1f s",
                worker.number,
                pid,
                describe_exit(status),
                delay,
            )
        return status

    def _stop(self, signum: int) -> bool:
        """Send *signum* to every worker and wait for them; return whether all stopped cleanly.

        A further signal is sent on to them too. A worker still running
        after ``STOP_TIMEOUT`` is killed.
        """
        running = [w for w in self._workers if w.process is not None]
        for worker in self._workers:
            worker.restart_at = None
        logger.info(
            "Stopping %d workers with %s", len(running), signal.Signals(signum).name
        )
        clean = True
        deadline = time.monotonic() + STOP_TIMEOUT
        to_send, seen = [signum], len(self._signals)
        while True:
            for sent in to_send:
                for worker in running:
                    assert worker.process is not None
                    worker.process.send_signal(sent)
            for worker in list(running):
                assert worker.process is not None
                status = worker.process.poll()
                if status is None:
                    continue
                running.remove(worker)
                # A worker killed by the signal itself had not started serving yet.
                if status not in (EXIT_OK, -signal.SIGINT, -signal.SIGTERM):
                    clean = False
                    logger.warning(
                        "Worker %d (pid %d) %s while stopping",
                        worker.number,
                        worker.process.pid,
                        describe_exit(status),
                    )
            if not running or time.monotonic() >= deadline:
                break
            self._woken.clear()
            self._woken.wait(SUPERVISE_INTERVAL)
            to_send, seen = self._signals[seen:], len(self._signals)
        for worker in running:
            assert worker.process is not None
            logger.warning(
                "Worker %d (pid %d) did not stop within %.0f s; killing it",
                worker.number,
                worker.process.pid,
                STOP_TIMEOUT,
            )
            worker.process.kill()
            try:
                worker.process.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.error(
                    "Worker %d (pid %d) did not die", worker.number, worker.process.pid
                )
            clean = False
        if clean:
            logger.info("Every worker has stopped")
        return clean


def describe_exit(status: int) -> str:
    """How a process with ``Popen.returncode`` *status* ended, as a verb phrase."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = str(-status)
    return f"was killed by signal {name}"
