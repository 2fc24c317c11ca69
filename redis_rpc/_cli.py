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
load the target, or keeps failing before it ever served. Each worker says
on a pipe of its own when it serves, or why it could not start, since a
restart cannot cure what keeps a service from starting (refused
credentials, say), and a supervisor that restarted it for ever would hide
that.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

from redis_rpc import __version__
from redis_rpc._app import LOG_FORMAT, App, _default_logging
from redis_rpc._backoff import Backoff
from redis_rpc._broker import RedisBroker
from redis_rpc._redis import Connection
from redis_rpc.errors import NoSubscriberError, RedisRPCError, SetupError

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
# App.run()'s format with the process id, so that the lines of the
# supervisor and of each worker, which share one stderr, can be told apart.
CLI_LOG_FORMAT = LOG_FORMAT.replace("%(name)s", "%(name)s [pid %(process)d]", 1)

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
# A worker that failed this many times in a row without ever serving, the
# first of them at most GIVE_UP_WINDOW seconds before the last, cannot start
# (refused credentials, a missing permission): the supervisor stops, as one
# worker serving in the command's own process would, instead of restarting
# it for ever. Five starts with the backoff above take about 10 to 20 s.
GIVE_UP_AFTER = 5
GIVE_UP_WINDOW = 60.0
# What a worker tells its supervisor on its status pipe, one line each.
SERVING, FAILED = "serving", "failed"
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
            status_fd=args.status_fd,
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
    except NoSubscriberError:
        # Its message advises request(fail_fast=False), which this command
        # does not take: the advice for a probe is where the answer should be.
        _error(
            f"no health answer on {channel!r}: nobody subscribes to it. Is the service"
            f" running, and does it call broker.serve_health({channel!r}) before"
            " start()?"
        )
        return EXIT_FAILURE
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
        TargetError: *target* is malformed or names a file, its module does
            not exist or raises while it is imported, the module has no such
            attribute, or it is neither an ``App`` nor a ``RedisBroker``.
    """
    module_name, attr = split_target(target)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    # A file's path is no module name; importing "service.py" would import
    # "service" first (running it) and then fail on its submodule "py".
    if "/" in module_name or "\\" in module_name:
        raise TargetError(_file_hint(module_name, attr))
    if module_name.endswith(".py") and os.path.isfile(module_name):
        raise TargetError(_file_hint(module_name, attr))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            # The module exists, and something it imports does not.
            raise TargetError(_import_failure(module_name, exc)) from None
        if module_name.endswith(".py"):
            raise TargetError(_file_hint(module_name, attr)) from None
        msg = (
            f"Cannot import {module_name!r}: there is no module named {exc.name!r} "
            f"(run from the directory that holds it, or add that to PYTHONPATH)."
        )
        raise TargetError(msg) from None
    except Exception as exc:  # noqa: BLE001 - whatever the module's own code raised
        raise TargetError(_import_failure(module_name, exc)) from None
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


def _file_hint(module_name: str, attr: str) -> str:
    """The advice for a target that names a file, ``service.py:app``: name the module."""
    path = module_name.replace("\\", "/").removeprefix("./").removesuffix(".py")
    dotted = path.strip("/").replace("/", ".")
    return (
        f"The target names a file, {module_name!r}; name its module instead, "
        f"without .py: {dotted}:{attr}"
    )


def _import_failure(module_name: str, exc: BaseException) -> str:
    """One line for a module whose import raised *exc*: what, where, and how to see more."""
    where, text = "", str(exc)
    if isinstance(exc, SyntaxError):  # its str() has the place too, in its own words
        text = exc.msg
        if exc.filename:
            where = f" ({_short_path(exc.filename)}, line {exc.lineno})"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        # The innermost frame outside importlib is the application's line.
        own = [f for f in frames if not f.filename.startswith("<frozen importlib")]
        if own:
            where = f" ({_short_path(own[-1].filename)}, line {own[-1].lineno})"
    text = " ".join(text.split())  # one line, whatever the message holds
    return (
        f"Importing {module_name!r} raised {type(exc).__name__}: {text}{where};"
        f" python -c 'import {module_name}' shows the traceback."
    )


def _short_path(path: str) -> str:
    """*path* relative to the current directory when it is inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive, on Windows
        return path
    return path if relative.startswith("..") else relative


def serve(
    target: str,
    *,
    log_level: str | None = None,
    worker: int | None = None,
    supervisor: int | None = None,
    status_fd: int | None = None,
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
        status_fd: The write end of the supervisor's status pipe, which
            hears ``serving`` once the service is up, or why it failed.
    """
    status = _Status(status_fd)
    if worker is not None:
        # The supervisor forwards SIGINT. Until the App takes it over, a
        # worker just ends, without a KeyboardInterrupt traceback.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        app = load_target(target)
    except TargetError as exc:
        _error(str(exc))
        status.close()
        return EXIT_USAGE
    # Registered last, so it runs once the application's own hooks have.
    app.after_startup(status.serving)
    watch = None if supervisor is None else _OrphanWatch(app, supervisor)
    try:
        with _default_logging(
            None if log_level is None else LOG_LEVELS[log_level], CLI_LOG_FORMAT
        ):
            if worker is not None:
                logger.info("Worker %d starting %s", worker, target)
            app.run()
    except RedisRPCError as exc:  # the broker could not start: one line says why
        _error(str(exc))
        status.failed(str(exc))
        return EXIT_FAILURE
    finally:
        # App.run() put back the handlers it replaced; a second Ctrl-C, or the
        # terminal's copy of a signal the supervisor also forwards, lands here.
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if watch is not None:
            watch.stop()
        status.close()
    return EXIT_OK


class _Status:
    """A worker's side of its status pipe: one line once it serves, or one saying why it failed.

    Without a pipe (no supervisor) it does nothing. A supervisor that has
    gone closed the read end; the worker then carries on without it.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def serving(self) -> None:
        self._say(SERVING)

    def failed(self, reason: str) -> None:
        self._say(f"{FAILED} {' '.join(reason.split())}")

    def _say(self, line: str) -> None:
        if self._fd is None:
            return
        # The supervisor may have gone; _OrphanWatch then stops the service.
        with contextlib.suppress(OSError):
            # One write below PIPE_BUF (4 KiB) is atomic, so lines never mix.
            os.write(self._fd, (line[:1000] + "\n").encode(errors="replace"))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


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
        # The read end of the current process's status pipe, what came on it
        # short of a full line, whether it said it serves, and why it failed.
        self.status_fd: int | None = None
        self.unread = b""
        self.served = False
        self.reason = ""
        self.gave_up = False  # it kept failing before it served: no restart
        # When its processes failed without having served, since one last served.
        self.early_failures: collections.deque[float] = collections.deque(
            maxlen=GIVE_UP_AFTER
        )

    def read_status(self) -> None:
        """Take in what the process said on its status pipe so far; close it at its end."""
        while self.status_fd is not None:
            try:
                chunk = os.read(self.status_fd, 4096)
            except BlockingIOError:
                return  # nothing more yet
            if not chunk:  # the process has closed it, or exited
                os.close(self.status_fd)
                self.status_fd = None
            self.unread += chunk
            *lines, self.unread = self.unread.split(b"\n")
            for line in lines:
                word, _, rest = line.decode(errors="replace").partition(" ")
                if word == SERVING:
                    self.served = True
                    self.early_failures.clear()
                elif word == FAILED:
                    self.reason = rest

    def cannot_start(self, now: float) -> bool:
        """Count a failure of the process that just exited; whether to give up on it."""
        if self.served:
            return False
        self.early_failures.append(now)
        return (
            len(self.early_failures) == GIVE_UP_AFTER
            and now - self.early_failures[0] <= GIVE_UP_WINDOW
        )


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
        not or one kept failing before it ever served, and 2 when a worker
        could not load the target.
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
                None if self._log_level is None else LOG_LEVELS[self._log_level],
                CLI_LOG_FORMAT,
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
        try:
            for worker in self._workers:
                self._start(worker)
            while not self._signals:
                self._woken.wait(SUPERVISE_INTERVAL)
                for worker in self._workers:
                    status = self._check(worker)
                    if status == EXIT_USAGE:
                        logger.error(
                            "Worker %d could not load %s; stopping the others",
                            worker.number,
                            self._target,
                        )
                        self._stop(signal.SIGTERM)
                        return EXIT_USAGE
                    if worker.gave_up:
                        self._stop(signal.SIGTERM)
                        _error(self._give_up_message(worker))
                        return EXIT_FAILURE
                if all(
                    w.process is None and w.restart_at is None for w in self._workers
                ):
                    logger.info("Every worker has exited by itself")
                    return EXIT_OK
            return EXIT_OK if self._stop(self._signals[0]) else EXIT_FAILURE
        finally:
            for worker in self._workers:
                if worker.status_fd is not None:
                    os.close(worker.status_fd)
                    worker.status_fd = None

    def _give_up_message(self, worker: _Worker) -> str:
        first, last = worker.early_failures[0], worker.early_failures[-1]
        return (
            f"worker {worker.number} failed {len(worker.early_failures)} times in"
            f" {last - first:.0f} s without ever serving, so the supervisor stops."
            f" The last time: {worker.reason}"
        )

    def _command(self, worker: _Worker, status_fd: int) -> list[str]:
        command = [sys.executable, "-m", "redis_rpc", "run", self._target]
        command += ["--worker", str(worker.number), "--supervisor", str(os.getpid())]
        command += ["--status-fd", str(status_fd)]
        if self._log_level is not None:
            command += ["--log-level", self._log_level]
        return command

    def _start(self, worker: _Worker) -> None:
        worker.restart_at = None
        worker.started = time.monotonic()
        worker.served, worker.reason, worker.unread = False, "", b""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)  # read in passing, between checks
        try:
            # Inherits the working directory, the environment and the output.
            worker.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                self._command(worker, write_fd), pass_fds=(write_fd,)
            )
        except OSError:
            os.close(read_fd)
            logger.exception("Cannot start worker %d", worker.number)
            self._schedule_restart(worker)
            return
        finally:
            os.close(write_fd)  # the worker holds its own copy
        worker.status_fd = read_fd
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
        """Restart *worker* if it is due; return its exit status if it has just exited.

        A worker that failed is scheduled for a restart, unless it could not
        load the target (status 2) or kept failing before it ever served:
        ``restart_at`` is then ``None``.
        """
        if worker.process is None:
            if worker.restart_at is not None and time.monotonic() >= worker.restart_at:
                self._start(worker)
            return None
        worker.read_status()
        status = worker.process.poll()
        if status is None:
            return None
        worker.read_status()  # what it said before it exited
        pid, worker.process = worker.process.pid, None
        if status not in (EXIT_OK, EXIT_USAGE) and worker.cannot_start(
            time.monotonic()
        ):
            worker.gave_up = True
            worker.reason = worker.reason or f"it {describe_exit(status)}."
            logger.error(
                "Worker %d (pid %d) %s before serving, %d times in a row; not restarting it",
                worker.number,
                pid,
                describe_exit(status),
                len(worker.early_failures),
            )
        elif status == EXIT_OK:
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
