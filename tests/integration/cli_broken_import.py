"""A target for the ``redis-rpc run`` tests whose own import fails, as a service's does without its configuration."""

from __future__ import annotations

msg = "CLI_APP_SETTINGS is not set"
raise RuntimeError(msg)
