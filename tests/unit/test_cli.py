"""The redis-rpc command's pure parts: its entry point, target parsing, exit descriptions and the log level."""

from __future__ import annotations

import configparser
import importlib
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

import redis_rpc
from redis_rpc._cli.app import _default_logging
from redis_rpc._cli.command import main
from redis_rpc._cli.console import CLI_LOG_FORMAT
from redis_rpc._cli.supervisor import (
    GIVE_UP_AFTER,
    GIVE_UP_WINDOW,
    _Worker,
    describe_exit,
)
from redis_rpc._cli.target import TargetError, split_target
from redis_rpc._cli.worker import _Status

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_script_is_main():
    """setup.cfg installs ``redis-rpc`` as redis_rpc._cli.command:main."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = dict(
        line.split(" = ")
        for line in config["options.entry_points"]["console_scripts"].split("\n")
        if line
    )
    module, attr = scripts["redis-rpc"].split(":")
    assert getattr(importlib.import_module(module), attr) is main


def test_version(capsys):
    """--version prints the package version and exits 0."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"redis-rpc {redis_rpc.__version__}\n"


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_workers_must_be_a_positive_number(capsys, workers):
    """--workers below 1, or not a number, is a usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["run", "app:app", "--workers", workers])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_a_target_splits_at_its_colon():
    """``package.module:attr`` splits into the module and a possibly dotted attribute."""
    assert split_target("a.b:c") == ("a.b", "c")
    assert split_target("a:b.c") == ("a", "b.c")


@pytest.mark.parametrize("target", ["a.b", ":app", "a.b:", ""])
def test_a_target_without_module_or_attribute_is_refused(target):
    """A target lacking its module or its attribute raises TargetError."""
    with pytest.raises(TargetError, match=r"package\.module:attr"):
        split_target(target)


def test_a_bad_target_in_process_exits_2(capsys):
    """A module that does not exist makes run print one line and return 2."""
    assert main(["run", "redis_rpc_no_such_module:app"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "redis-rpc: error: Cannot import 'redis_rpc_no_such_module': there is no"
        " module named 'redis_rpc_no_such_module' (run from the directory that"
        " holds it, or add that to PYTHONPATH).\n"
    )


def test_exits_are_described_by_status_or_signal():
    """A status is named as a status, a negative one as the signal that killed the process."""
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by signal SIGKILL"
    assert describe_exit(-200) == "was killed by signal 200"


def test_a_chosen_log_level_applies_to_the_default_handler(monkeypatch):
    """With a level given, the default stderr handler comes with it, and both go when the service ends."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    with _default_logging(logging.WARNING):
        assert [type(h) for h in root.handlers] == [logging.StreamHandler]
        assert root.level == logging.WARNING  # chosen, so not raised to INFO
    assert root.handlers == []
    assert root.level == logging.WARNING


def test_a_chosen_log_level_applies_to_the_applications_logging(monkeypatch):
    """Over the application's own set-up, a level given by name is applied and no handler is added."""
    root = logging.getLogger()
    own = logging.NullHandler()
    monkeypatch.setattr(root, "handlers", [own])
    monkeypatch.setattr(root, "level", logging.INFO)
    with _default_logging(logging.DEBUG):
        assert root.handlers == [own]
        assert root.level == logging.DEBUG
    assert root.level == logging.INFO


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty directory as the current one, which the command adds to sys.path only for this test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "import os\nraise RuntimeError('no config\\nfound')\n",
            "Importing 'svc' raised RuntimeError: no config found (svc.py, line 2);"
            " python -c 'import svc' shows the traceback.",
        ),
        (
            "import redis_rpc_missing_dependency\n",
            "Importing 'svc' raised ModuleNotFoundError: No module named"
            " 'redis_rpc_missing_dependency' (svc.py, line 1);"
            " python -c 'import svc' shows the traceback.",
        ),
        (
            "x = (\n",
            "Importing 'svc' raised SyntaxError: '(' was never closed (svc.py, line 1);"
            " python -c 'import svc' shows the traceback.",
        ),
    ],
)
def test_a_module_whose_import_raises_is_one_line_and_exit_2(
    project, capsys, source, message
):
    """A target whose module raises while it is imported gives one line naming the exception and where, and status 2."""
    (project / "svc.py").write_text(source)
    assert main(["run", "svc:app"]) == 2
    assert capsys.readouterr().err == f"redis-rpc: error: {message}\n"


@pytest.mark.parametrize(
    ("target", "hint"),
    [
        ("svc.py:app", "svc:app"),
        ("./svc.py:app", "svc:app"),
        ("pkg/svc.py:app", "pkg.svc:app"),
        ("pkg/svc:app", "pkg.svc:app"),
    ],
)
def test_a_target_that_names_a_file_is_told_to_name_the_module(
    project, capsys, target, hint
):
    """``run svc.py:app`` is refused with the module's name to use instead, without importing the file."""
    (project / "pkg").mkdir()
    for path in ("svc.py", "pkg/svc.py"):
        (project / path).write_text("raise RuntimeError('imported')\n")
    assert main(["run", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("redis-rpc: error: The target names a file")
    assert err.endswith(f"without .py: {hint}\n")
    assert "imported" not in err


def test_the_commands_log_lines_carry_the_process_id():
    """The command's log format names the process, so that its workers' lines can be told apart."""
    record = logging.LogRecord("redis_rpc._cli", logging.INFO, "", 0, "hi", (), None)
    line = logging.Formatter(CLI_LOG_FORMAT).format(record)
    assert f"redis_rpc._cli [pid {os.getpid()}] [" in line
    assert line.endswith("] hi")


class TestGivingUp:
    """The supervisor's count of a worker's failures before it ever served."""

    def test_five_failures_within_a_minute_give_up(self):
        """A worker that failed GIVE_UP_AFTER times in a row within GIVE_UP_WINDOW, never serving, cannot start."""
        worker = _Worker(1)
        results = [worker.cannot_start(float(t)) for t in range(GIVE_UP_AFTER)]
        assert results == [False] * (GIVE_UP_AFTER - 1) + [True]

    def test_failures_spread_over_more_than_the_window_go_on(self):
        """Failures further apart than the window in all keep the worker restarting."""
        worker = _Worker(1)
        step = GIVE_UP_WINDOW / (GIVE_UP_AFTER - 2)
        assert not any(worker.cannot_start(n * step) for n in range(3 * GIVE_UP_AFTER))

    def test_a_worker_that_served_starts_counting_again(self):
        """A process that said it serves clears the count, and its own death is not counted."""
        worker = _Worker(1)
        for t in range(GIVE_UP_AFTER - 1):
            assert not worker.cannot_start(float(t))
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        worker.status_fd = read_fd
        status = _Status(write_fd)
        status.serving()
        worker.read_status()
        assert worker.served
        assert not worker.cannot_start(10.0)
        worker.served = False  # its next process has not served yet
        assert not any(worker.cannot_start(10.0 + t) for t in range(GIVE_UP_AFTER - 1))
        status.close()
        worker.read_status()
        assert worker.status_fd is None

    def test_the_status_pipe_carries_the_reason_on_one_line(self):
        """A worker's failure reaches the supervisor as one line, whatever its message holds."""
        worker = _Worker(1)
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        worker.status_fd = read_fd
        status = _Status(write_fd)
        status.failed("Redis refused\nthe credentials.")
        status.close()
        worker.read_status()
        assert (worker.served, worker.reason) == (
            False,
            "Redis refused the credentials.",
        )
        assert worker.status_fd is None
