"""A password that Redis does not check: given in the URL to a server that has none.

Redis lets any password through for a default user without one when it
comes with a user name (``HELLO 3 AUTH default <password>``, redis-py's
handshake, or ``AUTH default <password>``), so a service can run for
months believing itself protected. Only the one-word ``AUTH <password>``
is refused then, with "called without any password configured": that is
the probe, sent once per server and process over a connection that has
just authenticated, and a WARNING says what it found.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis.exceptions

from redis_rpc._io.errors import password_not_set

logger = logging.getLogger(__name__)

_lock = threading.Lock()  # guards _probed
_probed: set[str] = set()  # the addresses already probed by this process


def check_password(connection: Any, address: str) -> None:
    """Warn once per *address* if the password *connection* authenticated with is not checked.

    *connection* is a redis-py connection that has just connected, with no
    reply due. Only a password for the default user can go unchecked; a
    named user's is, and a credential provider's is not probed.
    """
    if not getattr(connection, "password", None) or getattr(
        connection, "username", None
    ) not in (None, "", "default"):
        return
    with _lock:
        if address in _probed:
            return
        _probed.add(address)
    connection.send_command("AUTH", connection.password, check_health=False)
    try:
        connection.read_response()
    except (
        redis.exceptions.AuthenticationError
    ) as exc:  # before ResponseError: a ConnectionError
        if password_not_set(exc):
            logger.warning(
                "Redis at %s has no password set, yet the URL gives one: any"
                " password is let through. Leave the password out of the URL, or"
                " set one on the server (requirepass).",
                address,
            )
    except redis.exceptions.ResponseError:
        pass  # a probe only: the connection has authenticated already
