"""The supervisor of ``redis-rpc run --workers N``: it starts, watches, restarts, reloads and stops the workers.

On SIGHUP it reloads them as gunicorn does: a new process for each
worker, importing the code afresh, and once that one serves, the old one
is sent SIGTERM and finishes its handlers. A new process that cannot
start leaves its predecessor serving.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from redis_rpc._backoff import Backoff
from redis_rpc._cli.app import _default_logging
from redis_rpc._cli.console import (
    CLI_LOG_FORMAT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    LOG_LEVELS,
    SIGNALS,
    error,
)
from redis_rpc._cli.target import TargetError, split_target
from redis_rpc._cli.worker import FAILED, SERVING

if TYPE_CHECKING:
    from types import FrameType

logger = logging.getLogger(__name__)

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
        # After a SIGHUP: the process that serves until the new one does.
        self.predecessor: subprocess.Popen[bytes] | None = None

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
        self._reloads = 0  # SIGHUPs received, counted by their handler
        self._woken = threading.Event()  # a signal came
        # Replaced workers on their way out after SIGTERM: number, process,
        # and the time.monotonic() after which they are killed.
        self._retiring: list[tuple[int, subprocess.Popen[bytes], float]] = []

    def run(self) -> int:
        """Start the workers, keep them running, stop them on a signal; return the exit status.

        The status is 0 when every worker stopped cleanly, 1 when one did
        not or one kept failing before it ever served, and 2 when a worker
        could not load the target.
        """
        try:
            split_target(self._target)  # the shape only: the workers import it
        except TargetError as exc:
            error(str(exc))
            return EXIT_USAGE
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            with _default_logging(
                None if self._log_level is None else LOG_LEVELS[self._log_level],
                CLI_LOG_FORMAT,
            ):
                return self._supervise()
        finally:
            for signum in (*SIGNALS, signal.SIGHUP):  # the workers have gone: moot
                signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)
        self._woken.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reloads += 1
        self._woken.set()

    def _supervise(self) -> int:
        logger.info(
            "Supervisor serving %s with %d workers", self._target, len(self._workers)
        )
        reloaded = 0
        try:
            for worker in self._workers:
                self._start(worker)
            while not self._signals:
                self._woken.wait(SUPERVISE_INTERVAL)
                self._woken.clear()
                if self._reloads > reloaded and not self._signals:
                    reloaded = self._reloads
                    self._reload()
                self._reap_retiring()
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
                        error(self._give_up_message(worker))
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

    def _reload(self) -> None:
        """Start a new process for each serving worker; its predecessor stops once it serves."""
        logger.info(
            "Reloading %d workers (SIGHUP): each old one stops once its new one serves",
            len(self._workers),
        )
        for worker in self._workers:
            if worker.process is None:
                continue  # its restart, when due, loads the code afresh anyway
            if worker.predecessor is not None:  # a reload during a reload
                self._retire(worker.number, worker.process)
            else:
                worker.predecessor = worker.process
            if worker.status_fd is not None:  # the old process's: nobody reads it now
                os.close(worker.status_fd)
                worker.status_fd = None
            worker.process = None
            worker.backoff = RESTART_BACKOFF
            worker.early_failures.clear()
            worker.starts = max(worker.starts, 1)
            self._start(worker)

    def _retire(self, number: int, process: subprocess.Popen[bytes]) -> None:
        """Send a replaced worker SIGTERM: it finishes its handlers and exits."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            self._retiring.append((number, process, time.monotonic() + STOP_TIMEOUT))
            logger.info(
                "Stopping the old worker %d (pid %d): its new process serves",
                number,
                process.pid,
            )

    def _reap_retiring(self) -> None:
        """Forget replaced workers that have exited; kill those past ``STOP_TIMEOUT``."""
        still = []
        for number, process, kill_at in self._retiring:
            status = process.poll()
            if status is not None:
                logger.info(
                    "Old worker %d (pid %d) %s",
                    number,
                    process.pid,
                    describe_exit(status),
                )
            elif time.monotonic() >= kill_at:
                logger.warning(
                    "Old worker %d (pid %d) did not stop within %.0f s; killing it",
                    number,
                    process.pid,
                    STOP_TIMEOUT,
                )
                process.kill()
                still.append((number, process, time.monotonic() + KILL_TIMEOUT))
            else:
                still.append((number, process, kill_at))
        self._retiring = still

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
        if worker.served and worker.predecessor is not None:
            self._retire(worker.number, worker.predecessor)
            worker.predecessor = None
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
        # Every process of ours: workers, those they replace, and those retiring.
        running = [
            (w.number, w.process) for w in self._workers if w.process is not None
        ]
        running += [
            (w.number, w.predecessor)
            for w in self._workers
            if w.predecessor is not None
        ]
        running += [(number, process) for number, process, _ in self._retiring]
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
                for _, process in running:
                    if process.poll() is None:
                        process.send_signal(sent)
            for number, process in list(running):
                status = process.poll()
                if status is None:
                    continue
                running.remove((number, process))
                # A worker killed by the signal itself had not started serving yet.
                if status not in (EXIT_OK, -signal.SIGINT, -signal.SIGTERM):
                    clean = False
                    logger.warning(
                        "Worker %d (pid %d) %s while stopping",
                        number,
                        process.pid,
                        describe_exit(status),
                    )
            if not running or time.monotonic() >= deadline:
                break
            self._woken.clear()
            self._woken.wait(SUPERVISE_INTERVAL)
            to_send, seen = self._signals[seen:], len(self._signals)
        for number, process in running:
            logger.warning(
                "Worker %d (pid %d) did not stop within %.0f s; killing it",
                number,
                process.pid,
                STOP_TIMEOUT,
            )
            process.kill()
            try:
                process.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.error("Worker %d (pid %d) did not die", number, process.pid)
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
