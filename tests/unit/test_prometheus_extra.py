"""redis_rpc.prometheus without its extra: an ImportError that names the extra to install."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_importing_without_prometheus_client_names_the_extra(monkeypatch):
    """Without prometheus_client, importing redis_rpc.prometheus says which extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # blocks the import
    monkeypatch.delitem(sys.modules, "redis_rpc.prometheus", raising=False)
    with pytest.raises(ImportError, match=r'pip install "redis-rpc\[prometheus\]"'):
        importlib.import_module("redis_rpc.prometheus")
