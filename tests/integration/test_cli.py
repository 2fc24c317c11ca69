"""The redis-rpc command through real processes and signals: serving with one and two workers, restarts, bad targets, ping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from redis_rpc._cli.supervisor import GIVE_UP_AFTER, GIVE_UP_WINDOW
from tests.conftest import LONG_TIMEOUT, PROCESS_TEST_TIMEOUT, READY_TIMEOUT
from tests.helpers import Callers, OutputLines, wait_for

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.cli_app:app"
# How long a handler runs while the service is told to stop: long enough
# for the signal to arrive while it runs.
IN_FLIGHT = 1.0
# A request to a service just started: it may wait for a worker to come up.
ANSWER_TIMEOUT = READY_TIMEOUT + LONG_TIMEOUT


class Command:
    """``python -m redis_rpc ARGS`` running in the project root; daemon threads collect its output."""

    def __init__(self, redis_url: str, name: str, *args: str) -> None:
        env = {**os.environ, "CLI_APP_URL": redis_url, "CLI_APP_LIST": name}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "redis_rpc", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.popen.stdout is not None
        assert self.popen.stderr is not None
        self.out = OutputLines(self.popen.stdout, "redis-rpc stdout")
        self.err = OutputLines(self.popen.stderr, "redis-rpc stderr")
        self.stderr: list[str] = []  # what expect_log() has read so far

    def ready_pids(self, count: int) -> set[int]:
        """The pids of the next *count* processes that say they serve."""
        pids = set()
        for _ in range(count):
            word, pid = self.out.next(READY_TIMEOUT).split()
            assert word == "ready"
            pids.add(int(pid))
        return pids

    def expect_log(self, text: str, timeout: float = READY_TIMEOUT) -> str:
        """The next line on stderr that contains *text*; fails the test after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.err.next(max(0.01, deadline - time.monotonic()))
            self.stderr.append(line)
            if text in line:
                return line

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(LONG_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()  # its workers stop once they see it gone
                self.popen.wait(LONG_TIMEOUT)
        self.out.close()
        self.err.close()


@pytest.fixture
def redis_rpc(redis_url, unique_name):
    """Start ``python -m redis_rpc`` with the test app's list; stop what is left at the end."""
    commands: list[Command] = []

    def start(*args: str) -> Command:
        command = Command(redis_url, unique_name, *args)
        commands.append(command)
        return command

    yield start
    for command in commands:
        command.stop()


def run_to_end(redis_url, unique_name, *args, timeout=READY_TIMEOUT):
    """Run ``python -m redis_rpc ARGS`` to its end; return its exit status, stdout and stderr."""
    env = {**os.environ, "CLI_APP_URL": redis_url, "CLI_APP_LIST": unique_name}
    done = subprocess.run(
        [sys.executable, "-m", "redis_rpc", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def request(caller, seconds, name):
    return caller.request(seconds, list=name, timeout=ANSWER_TIMEOUT).decode()


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_one_worker_serves_in_its_own_process_and_drains_on_sigterm(
    redis_rpc, make_broker, unique_name
):
    """With one worker the command serves in its own process, and on SIGTERM finishes the running handler and exits 0."""
    service = redis_rpc("run", APP)
    assert service.ready_pids(1) == {service.popen.pid}
    caller = make_broker()
    assert request(caller, 0, unique_name) == service.popen.pid
    with Callers(1) as callers:
        reply = callers.submit(request, caller, IN_FLIGHT, unique_name)
        assert service.out.next(LONG_TIMEOUT) == f"handling {service.popen.pid}"
        service.popen.send_signal(signal.SIGTERM)
        assert reply.result(LONG_TIMEOUT) == service.popen.pid
    assert service.popen.wait(LONG_TIMEOUT) == 0
    service.expect_log("Broker closed", LONG_TIMEOUT)


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_two_workers_share_the_work_and_drain_on_sigterm(
    redis_rpc, make_broker, unique_name
):
    """Two worker processes each answer a request; SIGTERM to the supervisor lets both running handlers finish, and it exits 0."""
    service = redis_rpc("run", APP, "--workers", "2")
    workers = service.ready_pids(2)
    assert service.popen.pid not in workers
    caller = make_broker()
    with Callers(2) as callers:
        # One worker runs one handler at a time, so the second request
        # goes to the other worker while the first one sleeps.
        replies = [
            callers.submit(request, caller, IN_FLIGHT, unique_name) for _ in range(2)
        ]
        handling = {service.out.next(LONG_TIMEOUT) for _ in range(2)}
        assert handling == {f"handling {pid}" for pid in workers}
        service.popen.send_signal(signal.SIGTERM)
        assert {reply.result(LONG_TIMEOUT) for reply in replies} == workers
    assert service.popen.wait(LONG_TIMEOUT) == 0
    service.expect_log("Every worker has stopped", LONG_TIMEOUT)


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_killed_worker_is_logged_and_restarted(redis_rpc, make_broker, unique_name):
    """A worker killed with SIGKILL is logged with its signal and replaced by a new process that serves."""
    service = redis_rpc("run", APP, "--workers", "2", "--log-level", "info")
    workers = service.ready_pids(2)
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    line = service.expect_log(f"(pid {victim}) was killed by signal SIGKILL")
    assert "restarting it in" in line
    service.expect_log("Restarted worker")
    (newcomer,) = service.ready_pids(1)
    assert newcomer not in workers
    caller = make_broker()
    with Callers(2) as callers:
        replies = [
            callers.submit(request, caller, IN_FLIGHT / 2, unique_name)
            for _ in range(2)
        ]
        assert {reply.result(ANSWER_TIMEOUT) for reply in replies} == (
            workers - {victim} | {newcomer}
        )
    service.popen.send_signal(signal.SIGTERM)
    assert service.popen.wait(LONG_TIMEOUT) == 0


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_workers_stop_when_their_supervisor_is_killed(redis_rpc):
    """Workers whose supervisor died of SIGKILL notice, stop serving and exit instead of living on as orphans."""
    service = redis_rpc("run", APP, "--workers", "2")
    service.ready_pids(2)
    service.popen.kill()
    service.popen.wait(LONG_TIMEOUT)
    # The two workers' lines interleave: read until both have closed.
    for _ in range(2):
        service.expect_log("Broker closed", READY_TIMEOUT)
    gone = f"The supervisor (pid {service.popen.pid}) has gone; stopping"
    assert sum(gone in line for line in service.stderr) == 2


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_broker_is_served_in_an_app(redis_rpc, make_broker, unique_name):
    """A target that names a RedisBroker is served as an App would be, and stops on SIGINT with status 0."""
    service = redis_rpc("run", "tests.integration.cli_app:broker")
    service.expect_log("Broker started")
    assert request(make_broker(), 0, unique_name) == service.popen.pid
    service.popen.send_signal(signal.SIGINT)
    assert service.popen.wait(LONG_TIMEOUT) == 0


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "tests.integration.no_such_module:app",
            "no module named 'tests.integration.no_such_module'",
        ),
        ("tests.integration.cli_app:missing", "has no attribute 'missing'"),
        (
            "tests.integration.cli_app:NOT_AN_APP",
            "is of type str, not a redis_rpc.App or a redis_rpc.RedisBroker",
        ),
        ("tests.integration.cli_app", "must look like package.module:attr"),
        (
            "tests.integration.cli_broken_import:app",
            "Importing 'tests.integration.cli_broken_import' raised RuntimeError:"
            " CLI_APP_SETTINGS is not set (tests/integration/cli_broken_import.py,"
            " line 6)",
        ),
        (
            "tests/integration/cli_app.py:app",
            "name its module instead, without .py: tests.integration.cli_app:app",
        ),
    ],
)
def test_a_bad_target_is_a_usage_error(redis_url, unique_name, target, message):
    """A target that cannot be loaded gives one line on stderr that says why, and exit status 2."""
    status, out, err = run_to_end(redis_url, unique_name, "run", target)
    assert (status, out) == (2, "")
    assert err.splitlines() == [err.strip()]
    assert message in err
    assert err.startswith("redis-rpc: error: ")


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_bad_target_stops_the_supervisor(redis_url, unique_name):
    """When its workers cannot load the target, the supervisor stops them all and exits 2 instead of restarting them."""
    status, _, err = run_to_end(
        redis_url,
        unique_name,
        "run",
        "tests.integration.cli_app:missing",
        "--workers",
        "2",
    )
    assert status == 2
    assert "has no attribute 'missing'" in err
    assert "could not load tests.integration.cli_app:missing" in err
    assert "Traceback" not in err
    assert "Restarted" not in err


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_the_supervisor_stops_when_workers_cannot_start(redis_server, unique_name):
    """Workers refused by Redis every time are restarted a few times, then the supervisor exits 1 saying why."""
    url = f"redis://nobody:hunter2@127.0.0.1:{redis_server.port}/0"
    started = time.monotonic()
    status, out, err = run_to_end(
        url,
        unique_name,
        "run",
        APP,
        "--workers",
        "2",
        timeout=PROCESS_TEST_TIMEOUT - READY_TIMEOUT,
    )
    assert (status, out) == (1, "")
    assert time.monotonic() - started < GIVE_UP_WINDOW
    last = err.splitlines()[-1]
    assert last.startswith("redis-rpc: error: worker ")
    assert f"failed {GIVE_UP_AFTER} times in " in last
    assert "without ever serving, so the supervisor stops" in last
    assert "refused the credentials" in last
    assert "hunter2" not in err
    assert "Traceback" not in err


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_log_lines_name_the_process_of_each_worker(redis_rpc):
    """With several workers, every log line carries the pid of the process that wrote it."""
    service = redis_rpc("run", APP, "--workers", "2")
    workers = service.ready_pids(2)
    # In any order: looking for one worker's line reads past the other's.
    for pid in workers:
        if not any(f"[pid {pid}]" in line for line in service.stderr):
            service.expect_log(f"[pid {pid}]")
    assert any(f"[pid {service.popen.pid}]" in line for line in service.stderr)
    service.popen.send_signal(signal.SIGTERM)
    assert service.popen.wait(LONG_TIMEOUT) == 0


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_health_on_a_channel_nobody_serves_says_what_to_check(redis_url, unique_name):
    """health to a channel without a subscriber exits 1 and says to check the service, not to pass an option it lacks."""
    channel = f"{unique_name}.health"
    status, out, err = run_to_end(redis_url, unique_name, "health", redis_url, channel)
    assert (status, out) == (1, "")
    assert err == (
        f"redis-rpc: error: no health answer on {channel!r}: nobody subscribes to it."
        f" Is the service running, and does it call broker.serve_health({channel!r})"
        " before start()?\n"
    )


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_ping_prints_the_server_version(redis_url, raw, unique_name):
    """ping exits 0 and prints the version of a server that answers."""
    status, out, err = run_to_end(redis_url, unique_name, "ping", redis_url)
    version = raw.info("server")["redis_version"]
    assert (status, err) == (0, "")
    assert out.startswith(f"PONG from Redis {version} at ")


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_ping_a_closed_port_fails_without_showing_the_password(unique_name):
    """ping exits 1 with one line naming the address when nothing listens, and never prints the URL's password."""
    with socket.socket() as closed:  # bound but not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        status, out, err = run_to_end(
            "redis://unused",
            unique_name,
            "ping",
            f"redis://user:hunter2@127.0.0.1:{port}/0",
            "--timeout",
            "2",
        )
    assert (status, out) == (1, "")
    assert err.splitlines() == [err.strip()]
    assert f"127.0.0.1:{port}" in err
    assert "hunter2" not in err


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_ping_with_refused_credentials_fails_without_showing_them(
    redis_server, unique_name
):
    """ping exits 1 when the server refuses the credentials, and the password appears nowhere."""
    url = f"redis://nobody:hunter2@127.0.0.1:{redis_server.port}/0"
    status, out, err = run_to_end(redis_server.url, unique_name, "ping", url)
    assert (status, out) == (1, "")
    assert "credentials" in err
    assert "hunter2" not in err


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_python_m_redis_rpc_help(redis_url, unique_name):
    """``python -m redis_rpc --help`` exits 0 and lists the commands."""
    status, out, _ = run_to_end(redis_url, unique_name, "--help")
    assert status == 0
    assert out.startswith("usage: redis-rpc")
    assert "run" in out
    assert "ping" in out


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_health_probes_a_service_over_redis(redis_url, raw, make_broker, unique_name):
    """health exits 0 while the service is healthy, 1 naming what is down once a consumer fails, and 1 when nobody answers."""
    channel = f"{unique_name}.health"
    server = make_broker()
    server.subscriber(list=unique_name)(lambda body: body)
    server.serve_health(channel)
    with server:
        status, out, err = run_to_end(
            redis_url, unique_name, "health", redis_url, channel
        )
        assert (status, out.strip(), err) == (0, "healthy", "")
        raw.set(unique_name, "not a list")  # the list's consumer fails from now on

        def down() -> bool:
            status, out, _ = run_to_end(
                redis_url, unique_name, "health", redis_url, channel
            )
            return status == 1 and unique_name in out and "WRONGTYPE" in out

        assert wait_for(down, LONG_TIMEOUT, interval=0.2)
    status, out, err = run_to_end(
        redis_url, unique_name, "health", redis_url, channel, "--timeout", "1"
    )
    assert status == 1
    assert "no health answer" in err
    assert redis_url not in out + err


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_sighup_reloads_the_workers_gracefully(redis_rpc, make_broker, unique_name):
    """SIGHUP to the supervisor starts new workers, stops the old ones once the new serve, lets their running handlers finish, and keeps serving."""
    service = redis_rpc("run", APP, "--workers", "2", "--log-level", "info")
    old = service.ready_pids(2)
    caller = make_broker()
    with Callers(1) as callers:
        running = callers.submit(request, caller, IN_FLIGHT, unique_name)
        assert service.out.next(LONG_TIMEOUT) in {f"handling {pid}" for pid in old}
        service.popen.send_signal(signal.SIGHUP)
        new = service.ready_pids(2)
        assert new.isdisjoint(old)
        assert running.result(ANSWER_TIMEOUT) in old  # finished, not cut short
    assert wait_for(lambda: not any(_alive(pid) for pid in old), READY_TIMEOUT)
    assert service.popen.poll() is None
    assert request(caller, 0, unique_name) in new
    service.expect_log("Reloading 2 workers (SIGHUP)")
    service.popen.send_signal(signal.SIGTERM)
    assert service.popen.wait(LONG_TIMEOUT) == 0
