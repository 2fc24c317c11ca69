"""What becomes of brokers when the process forks.

In a child forked the usual way, Python's fork hooks reset every broker:
the parent's threads do not exist there, and its sockets must not be
shared, so each broker forgets them and opens its own when first used.
Consumers never cross a fork: a broker that was serving cannot start in
the child, and the parent is told once that its consumers stay there.

uWSGI forks its workers from C by default, which skips those hooks. Such a
fork shows as a changed pid on a broker's next call (``ProcessGuard``): a
broker that the parent never used resets itself then, as the hooks would
have; one whose threads and connections are the parent's is refused, with
the settings that fix it.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Protocol

from redis_rpc.errors import BrokerStateError

if TYPE_CHECKING:
    from collections.abc import Callable


class Forkable(Protocol):
    """What a broker does at a fork."""

    def _after_fork(self) -> None:
        """In the child, before anything else runs: forget the parent's threads and connections."""

    def _forked_while_serving(self) -> None:
        """In the parent: say once that consumers do not follow into children."""


logger = logging.getLogger(__name__)

# Every broker of this process, so that a forked child can reset them all.
_tracked: weakref.WeakSet[Forkable] = weakref.WeakSet()


def track(broker: Forkable) -> None:
    """Reset *broker* in every child forked from now on, and warn in the parent."""
    _tracked.add(broker)


def _in_child() -> None:
    # Runs in a forked child before anything else: the child has one thread.
    for broker in list(_tracked):
        broker._after_fork()


def _in_parent() -> None:
    for broker in list(_tracked):
        broker._forked_while_serving()


os.register_at_fork(after_in_child=_in_child, after_in_parent=_in_parent)


def warn_serving(broker: object, consumers: int) -> None:
    """In the parent after a fork: say that *broker*'s *consumers* do not follow into children.

    A web server's master that started a broker at import (gunicorn
    ``--preload``, uWSGI without ``lazy-apps``) serves from the master; the
    warning reaches its output though it configured no logging (``_logs``).
    """
    logger.warning(
        "This process forked while %r was serving: its %d consumer(s) keep running"
        " in this process only (a web server's master, under gunicorn --preload or"
        " uWSGI without lazy-apps, when start() ran at import), and the child"
        " cannot start it. Start serving brokers in each child after the fork"
        " instead (gunicorn: post_fork; uWSGI: lazy-apps), or serve them in a"
        " process of their own (redis-rpc run).",
        broker,
        consumers,
    )


# Taken only in a child forked without the hooks above, by the first
# threads to use a broker there.
_hookless_lock = threading.Lock()


class ProcessGuard:
    """Notices that a broker is used in a process forked without Python's fork hooks."""

    def __init__(self) -> None:
        # The process whose threads and connections the broker's are.
        self._pid = os.getpid()

    def renew(self) -> None:
        """The broker now belongs to this process: call from its reset after a fork."""
        self._pid = os.getpid()

    def check(self, action: str, *, used: bool, reset: Callable[[], None]) -> None:
        """Before *action*: in a process forked without the hooks, *reset* an unused broker, or refuse.

        *used* says whether the broker started threads or opened connections
        in the process it was created in; *reset* must call ``renew()``.

        Raises:
            BrokerStateError: The broker was used before such a fork.
        """
        if self._pid == os.getpid():
            return
        with _hookless_lock:
            if self._pid == os.getpid():  # another thread of the child did it
                return
            if not used:
                reset()
                return
        msg = (
            f"Cannot {action}: this process (pid {os.getpid()}) was forked from"
            f" pid {self._pid} without running Python's fork hooks, after the"
            " broker had started threads or opened connections there, so they"
            " are still the parent's, and replies would go to the parent. uWSGI"
            " forks this way unless told otherwise: set py-call-osafterfork = true"
            " (or lazy-apps = true), or create the broker after the fork, or do"
            " not use it before."
        )
        raise BrokerStateError(msg)
