"""The redis-rpc command's pure parts: its entry point, target parsing, exit descriptions and the log level."""

from __future__ import annotations

import configparser
import importlib
import logging
import signal
from pathlib import Path

import pytest

import redis_rpc
from redis_rpc._app import _default_logging
from redis_rpc._cli import TargetError, describe_exit, main, split_target

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_script_is_main():
    """setup.cfg installs ``redis-rpc`` as redis_rpc._cli:main."""
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
