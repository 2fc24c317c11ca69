"""The package builds as a wheel and an sdist, and the wheel installs and imports on its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.conftest import PROCESS_TEST_TIMEOUT, READY_TIMEOUT

ROOT = Path(__file__).parents[2]
# What a build reads; copied, so that builds never write into the checkout
# (several test runs may share it).
SOURCES = (
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "MANIFEST.in",
    "README.rst",
    "CHANGELOG.rst",
    "LICENSE",
)
BUILD_TIMEOUT = 4 * READY_TIMEOUT


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The wheel and the sdist of a copy of the checkout, in one directory."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        shutil.copy(ROOT / name, source / name)
    for package in ("redis_rpc", "tests", "docs"):
        shutil.copytree(
            ROOT / package,
            source / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_build"),
        )
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_the_wheel_holds_the_package_and_its_metadata(built):
    """The wheel carries every module and py.typed, no tests, the three runtime dependencies and the optional extras."""
    wheel = only(built, "redis_rpc-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    modules = {p.name for p in (ROOT / "redis_rpc").glob("*.py")}
    assert {n.split("/", 1)[1] for n in names if n.startswith("redis_rpc/")} >= {
        *modules,
        "py.typed",
    }
    assert not [n for n in names if n.startswith("tests/")]
    assert metadata["Name"] == "redis-rpc"
    runtime = sorted(
        requirement.split(">")[0].split("=")[0].strip()
        for requirement in metadata.get_all("Requires-Dist") or []
        if "extra ==" not in requirement
    )
    assert runtime == ["attrs", "cattrs", "redis"]
    assert {"hiredis", "otel"} <= set(metadata.get_all("Provides-Extra") or [])
    assert metadata["Description-Content-Type"] == "text/x-rst"


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_the_sdist_holds_the_sources_docs_and_tests(built):
    """The sdist carries the package, setup files, README, CHANGELOG, LICENSE, the docs and the tests."""
    sdist = only(built, "redis[-_]rpc-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {
        "setup.cfg",
        "setup.py",
        "pyproject.toml",
        "README.rst",
        "CHANGELOG.rst",
        "LICENSE",
        "docs/index.rst",
        "redis_rpc/__init__.py",
        "redis_rpc/py.typed",
        "tests/conftest.py",
    } <= names


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_the_wheel_installs_and_imports(built, tmp_path):
    """Installed from the wheel alone, the package imports and reports its version."""
    wheel = only(built, "redis_rpc-*-py3-none-any.whl")
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=BUILD_TIMEOUT,
        capture_output=True,
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import redis_rpc; print(redis_rpc.__file__, redis_rpc.__version__)",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        check=True,
    )
    location, version = done.stdout.split()
    assert Path(location).is_relative_to(target)
    assert wheel.name.startswith(f"redis_rpc-{version}-")
