"""The docs' API reference covers every public name, and the docs' build settings stay honest."""

from __future__ import annotations

import configparser
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "reference" / "api.rst"
# Modules documented whole with ``.. automodule:: NAME`` and ``:members:``,
# which autodoc takes from their __all__.
WHOLE_MODULES = (
    "redis_rpc.errors",
    "redis_rpc.testing",
    "redis_rpc.opentelemetry",
    "redis_rpc.prometheus",
)


def _directives(text: str) -> dict[str, set[str]]:
    """The names each ``.. kind:: name`` directive of *text* documents, by kind."""
    found: dict[str, set[str]] = {}
    for kind, name in re.findall(r"^\.\. (\w+):: (\S+)", text, re.MULTILINE):
        found.setdefault(kind, set()).add(name)
    return found


def test_every_name_of_redis_rpc_is_in_the_api_reference():
    """Each name in redis_rpc.__all__ has an entry of its own, or is said to be re-exported from where it is documented."""
    import redis_rpc

    text = API.read_text()
    documented = set().union(*_directives(text).values())
    missing = [
        name
        for name in redis_rpc.__all__
        if name not in documented and f"``redis_rpc.{name}`` is" not in text
    ]
    assert not missing


@pytest.mark.parametrize("module", WHOLE_MODULES)
def test_each_public_module_is_documented_whole(module):
    """Every other public module is an automodule with its members, which autodoc takes from its __all__."""
    text = API.read_text()
    assert f".. automodule:: {module}\n   :members:" in text
    assert importlib.import_module(module).__all__


def test_the_request_method_is_documented():
    """RedisBroker is documented with its members, so the reference lists RedisBroker.request."""
    import redis_rpc

    assert ".. autoclass:: RedisBroker\n   :members:" in API.read_text()
    assert redis_rpc.RedisBroker.request.__doc__


def test_the_docs_extra_pins_sphinx_and_the_documented_extras():
    """The docs extra pins Sphinx, and brings the extras whose modules the reference imports."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    docs = config["options.extras_require"]["docs"].split()
    assert any(re.fullmatch(r"sphinx==[\d.]+", line) for line in docs)
    assert any(line.startswith("prometheus-client") for line in docs)
    assert any(line.startswith("opentelemetry-api") for line in docs)
