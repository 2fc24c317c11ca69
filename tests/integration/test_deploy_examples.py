"""The Flask and Django examples, deployed as a user would: a service process and gunicorn with 2 workers.

A third run serves the Flask example's handlers in the web workers
themselves, started in post_fork from an app that gunicorn preloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import LONG_TIMEOUT, PROCESS_TEST_TIMEOUT, READY_TIMEOUT
from tests.helpers import Callers, OutputLines

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# Few enough for a busy 2-core machine, enough for both workers and all
# their threads to take a share.
REQUESTS = 200
CALLERS = 8
WORKERS = 2
# gunicorn stops gracefully: its workers finish their requests, run
# worker_exit (which closes the broker) and exit; the master reaps them.
STOP_TIMEOUT = READY_TIMEOUT

LOADED = re.compile(r"Worker (\d+) loaded the app")
CLOSED = re.compile(r"Worker (\d+) closed its broker")
SERVING = re.compile(r"Serving list ")
# The last lines each process prints: everything before them has been read.
SERVICE_DONE = re.compile(r"Broker closed")
WEB_DONE = re.compile(r"Shutting down: Master")


@attrs.frozen
class Deployment:
    folder: Path
    service: tuple[str, ...] | None  # argv of the service process, if any
    wsgi_app: str
    web_packages: tuple[str, ...]
    options: tuple[str, ...] = ()  # more gunicorn options
    env: dict[str, str] = attrs.field(factory=dict)


FLASK = Deployment(
    EXAMPLES / "flask_app", ("service.py",), "app:app", ("gunicorn", "flask")
)
# No service process: each web worker starts a serving broker in post_fork,
# though the app, and so the broker, was imported in the master.
FLASK_SERVING_WORKERS = attrs.evolve(
    FLASK, service=None, options=("--preload",), env={"SERVE_IN_WORKERS": "1"}
)
DJANGO = Deployment(
    EXAMPLES / "django_project",
    ("manage.py", "runrpc"),
    "mysite.wsgi",
    ("gunicorn", "django"),
)


def require(*modules: str) -> None:
    """Skip when the test extra's web packages are missing; CI must have them."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed, and CI must not skip these tests.")
        pytest.skip(f"{missing} not installed (pip install -e '.[test]')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A process of an example, run from its folder; a daemon thread collects its output."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.seen: list[str] = []
        self.lines = OutputLines(self.popen.stdout, argv[-1])  # type: ignore[arg-type]

    def wait_for(self, pattern: re.Pattern[str], count: int = 1) -> list[re.Match[str]]:
        """Read output until *count* lines match *pattern*, within READY_TIMEOUT in all."""
        deadline = time.monotonic() + READY_TIMEOUT
        found: list[re.Match[str]] = []
        while len(found) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"No {count} lines matching {pattern.pattern!r} in: {self.seen}"
                )
            line = self.lines.next(remaining)
            self.seen.append(line)
            if match := pattern.search(line):
                found.append(match)
        return found

    def terminate(self) -> int:
        """SIGTERM the process and return its exit status, failing if it takes too long."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"Still running {STOP_TIMEOUT} s after SIGTERM: {self.seen}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(LONG_TIMEOUT)
        self.lines.close()


@pytest.fixture
def run(redis_url):
    """Start processes of an example against the session's redis-server; kill any left at the end."""
    processes: list[Process] = []
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    # The worktree's package, whatever the venv has installed.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)

    def start(deployment: Deployment, *argv: str) -> Process:
        process = Process(list(argv), deployment.folder, env | deployment.env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


def get_json(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, Any]:
    with opener.open(url, timeout=LONG_TIMEOUT) as response:
        return response.status, json.loads(response.read())


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
@pytest.mark.parametrize(
    "deployment",
    [FLASK, FLASK_SERVING_WORKERS, DJANGO],
    ids=["flask", "flask-serving-workers", "django"],
)
def test_example_under_gunicorn(run, deployment):
    """Every request through both gunicorn workers gets its handler's answer, and SIGTERM stops every process with status 0."""
    require(*deployment.web_packages)
    processes = []
    if deployment.service is not None:
        service = run(deployment, *deployment.service)
        service.wait_for(SERVING)
        processes.append((service, SERVICE_DONE))

    port = free_port()
    web = run(
        deployment,
        "-m",
        "gunicorn",
        "--config",
        "gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(WORKERS),
        # gunicorn 25.1+ opens a control socket at one path per user, which
        # two gunicorns at once (two test runs) would share.
        "--no-control-socket",
        *deployment.options,
        deployment.wsgi_app,
    )
    processes.insert(0, (web, WEB_DONE))
    workers = {int(m[1]) for m in web.wait_for(LOADED, WORKERS)}
    assert len(workers) == WORKERS

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    names = [f"user-{n}" for n in range(REQUESTS)]
    with Callers(CALLERS) as callers:
        answers = list(
            callers.map(
                lambda name: get_json(opener, f"http://127.0.0.1:{port}/greet/{name}"),
                names,
            )
        )
    assert [(status, body["greeting"]) for status, body in answers] == [
        (200, f"Hello, {name}!") for name in names
    ]
    assert {body["pid"] for _, body in answers} == workers

    for process, done in processes:  # the web server first, as its callers
        assert process.terminate() == 0
        # What it printed on the way out is in the pipe: read up to its last line.
        if process is web:
            closed = {int(m[1]) for m in web.wait_for(CLOSED, WORKERS)}
            assert closed == workers
        process.wait_for(done)
        assert not [line for line in process.seen if "Traceback" in line]
