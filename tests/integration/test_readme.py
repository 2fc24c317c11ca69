"""Every Python code block of README.rst and of the docs runs as written, against a private redis-server.

Each document (README.rst, and every ``.rst`` page under ``docs/``) is
checked on its own. A block is a program of its own, run in a fresh
interpreter, with ``redis://localhost:6379`` pointing at the test
server. A block preceded by the comment ``.. serves`` is a server: it
starts in the background, must print nothing to stderr that looks like a
traceback, serves the blocks that follow it in the same document, and must
exit 0 on SIGTERM once they are done. Any other block must exit 0 by itself.

A block preceded by ``.. from <path>`` (in any language) is an excerpt of a
file that other tests run, such as an example's gunicorn configuration:
its lines must appear in that file, in order (``...`` stands for lines
left out). A block preceded by ``.. file: <name>`` is a module that later
blocks import: it is saved under that name beside them, not run. A block
preceded by ``.. pytest`` is a test module, run with pytest.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from tests.conftest import PROCESS_TEST_TIMEOUT, READY_TIMEOUT
from tests.helpers import OutputLines

ROOT = Path(__file__).parents[2]
README = ROOT / "README.rst"
DOCS = ROOT / "docs"
# Every document whose blocks are checked, relative to the root: the README
# first, then the docs' pages (not what Sphinx built from them).
DOCUMENTS = [
    "README.rst",
    *sorted(
        str(page.relative_to(ROOT))
        for page in DOCS.rglob("*.rst")
        if "_build" not in page.relative_to(DOCS).parts
    ),
]
# What a newcomer reads first stays short; everything else is in the docs.
README_MAX_LINES = 300
MAX_LINE_LENGTH = 200
DEFAULT_URL = "redis://localhost:6379"
SERVES = ".. serves"
FROM = ".. from "
FILE = ".. file: "
PYTEST = ".. pytest"
# A server block prints this once it serves (App.run() logs it at INFO).
SERVING = "Broker started"


@attrs.frozen
class Block:
    line: int  # where the block starts in its document, for messages
    code: str
    serves: bool = False
    source: str = ""  # the file it is an excerpt of, if any
    language: str = "python"
    module: str = ""  # the file name it is saved as, for later blocks to import
    pytest: bool = False  # a test module, run with pytest


def code_blocks(text: str) -> list[Block]:
    """The ``.. code-block::`` blocks of *text*, dedented, in order."""
    lines = text.splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if not line.startswith(".. code-block:: "):
            continue
        language = line.split("::", 1)[1].strip()
        previous = [x.strip() for x in lines[max(0, number - 3) : number] if x.strip()]
        marker = previous[-1] if previous else ""
        body: list[str] = []
        for following in lines[number + 1 :]:
            if following.strip() and not following.startswith((" ", "\t")):
                break
            body.append(following)
        indent = min(len(x) - len(x.lstrip()) for x in body if x.strip())
        code = "\n".join(x[indent:] for x in body).strip() + "\n"
        blocks.append(
            Block(
                line=number + 1,
                code=code,
                serves=marker == SERVES,
                source=marker[len(FROM) :] if marker.startswith(FROM) else "",
                language=language,
                module=marker[len(FILE) :] if marker.startswith(FILE) else "",
                pytest=marker == PYTEST,
            )
        )
    return blocks


def python_blocks(text: str) -> list[Block]:
    """The Python blocks of *text* that run as programs (not excerpts)."""
    return [b for b in code_blocks(text) if b.language == "python" and not b.source]


def test_the_readme_blocks_are_found():
    """The parser finds blocks, and a serving one is told apart."""
    text = (
        "Intro.\n\n.. serves\n\n.. code-block:: python\n\n    print(1)\n\n"
        "    print(2)\n\nText.\n\n.. code-block:: python\n\n    x = 3\n"
    )
    assert python_blocks(text) == [
        Block(line=5, code="print(1)\n\nprint(2)\n", serves=True),
        Block(line=13, code="x = 3\n", serves=False),
    ]
    excerpt = ".. from a/b.ini\n\n.. code-block:: ini\n\n    [x]\n"
    assert code_blocks(excerpt) == [
        Block(line=3, code="[x]\n", source="a/b.ini", language="ini")
    ]
    assert python_blocks(README.read_text()), "README.rst has no Python block"


def test_the_documents_are_found():
    """The README and the docs' pages are checked, and between them they hold excerpts and server blocks."""
    assert "docs/getting-started.rst" in DOCUMENTS
    assert "docs/guides/deployment.rst" in DOCUMENTS
    blocks = [b for d in DOCUMENTS for b in code_blocks((ROOT / d).read_text())]
    assert any(b.source for b in blocks), "no excerpt anywhere"
    assert any(b.serves for b in blocks), "no server block anywhere"
    assert any(b.pytest for b in blocks), "no test module anywhere"


def test_the_readme_is_short():
    """The README fits in a few screens, with no line longer than MAX_LINE_LENGTH."""
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    long = [n for n, line in enumerate(lines, 1) if len(line) > MAX_LINE_LENGTH]
    assert not long, f"README.rst lines over {MAX_LINE_LENGTH} characters: {long}"


def test_the_readme_links_to_pages_that_exist():
    """Each relative link of the README names a file of the repository."""
    targets = re.findall(r"`[^`<]*<([^>:]+)>`_", README.read_text())
    assert targets, "README.rst links to no page"
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert not missing


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_excerpt_is_in_its_file(document):
    """A block marked ``.. from <path>`` shows lines of that file, in order."""
    excerpts = [b for b in code_blocks((ROOT / document).read_text()) if b.source]
    for block in excerpts:
        lines = [x.strip() for x in (ROOT / block.source).read_text().splitlines()]
        position = 0
        for wanted in (x.strip() for x in block.code.splitlines()):
            if not wanted or wanted == "...":
                continue
            assert wanted in lines[position:], (
                f"{document} line {block.line}: {wanted!r} is not in {block.source}"
                " (after the lines before it)"
            )
            position = lines.index(wanted, position) + 1


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_block_is_run_or_an_excerpt(document):
    """No code block escapes both checks: other languages must be excerpts."""
    for block in code_blocks((ROOT / document).read_text()):
        assert block.language == "python" or block.source, (
            f"{document} line {block.line}: a {block.language} block that is not an excerpt"
        )


def _start(block: Block, url: str, tmp_path: Path) -> subprocess.Popen[str]:
    name = f"test_line_{block.line}.py" if block.pytest else f"line_{block.line}.py"
    script = tmp_path / name
    script.write_text(block.code.replace(DEFAULT_URL, url))
    # The blocks' own modules (.. file:) beside them, then the checkout.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(tmp_path), str(ROOT)))}
    command = [sys.executable, str(script)]
    if block.pytest:
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(script),
        ]
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(
    process: subprocess.Popen[str],
    block: Block,
    output: OutputLines,
    seen: list[str],
    document: str,
) -> None:
    try:
        code = process.wait(READY_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(READY_TIMEOUT)
        code = None
    output.close()
    printed = "\n".join([*seen, *output.rest()])
    assert code == 0, f"{document} line {block.line} exited {code}:\n{printed}"
    assert "Traceback" not in printed, f"{document} line {block.line}:\n{printed}"


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT * 2)
@pytest.mark.parametrize(
    "document",
    [d for d in DOCUMENTS if python_blocks((ROOT / d).read_text())],
)
def test_every_python_block_runs(redis_url, tmp_path, document):
    """Each block runs as written; server blocks serve the blocks after them and stop on SIGTERM."""
    servers: list[tuple[subprocess.Popen[str], Block, OutputLines, list[str]]] = []
    try:
        for block in python_blocks((ROOT / document).read_text()):
            if block.module:
                (tmp_path / block.module).write_text(
                    block.code.replace(DEFAULT_URL, redis_url)
                )
                continue
            process = _start(block, redis_url, tmp_path)
            assert process.stdout is not None
            output = OutputLines(process.stdout, name=f"{document}:{block.line}")
            if not block.serves:
                _finish(process, block, output, [], document)
                continue
            seen: list[str] = []
            servers.append((process, block, output, seen))
            while not any(SERVING in line for line in seen):
                seen.append(output.next(READY_TIMEOUT))
    finally:
        for process, _, _, _ in servers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, block, output, seen in servers:
            _finish(process, block, output, seen, document)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_blocks_name_no_other_server(document):
    """Blocks reach Redis only through the URL the test rewrites."""
    for block in python_blocks((ROOT / document).read_text()):
        urls = set(re.findall(r"rediss?://[^\"' ]+", block.code))
        assert urls <= {DEFAULT_URL}, f"{document} line {block.line}: {urls}"
