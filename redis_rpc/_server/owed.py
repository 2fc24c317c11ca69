"""``Owed``: what a consumer owes Redis (replies, acks), carried by its next blocking read.

A list or stream consumer that handles a batch produces replies and acks
while its next ``BLPOP`` or ``XREADGROUP`` is about to go out: rather than
a round trip each through the pipe, they go in the same write as that
read. Whatever is produced while no read is coming (the consumer is
blocked in one, or stopping) goes through the pipe at once, so that
nothing waits behind a blocking read.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from redis_rpc._io.commands import grouped
from redis_rpc._io.pipe import Posted
from redis_rpc.errors import RedisRPCError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis_rpc._io.commands import Args, Command
    from redis_rpc._io.interfaces import Backend

logger = logging.getLogger(__name__)


class Owed:
    """What a consumer owes Redis (replies, events, acks), until its next read carries it.

    Workers add to it while the consumer is between reads; otherwise they
    send on their own through the pipe, so that nothing waits behind a
    blocking read. Thread-safe. Implements ``_io.interfaces.Owed``, which
    the consumer's ``Reader`` takes from.
    """

    def __init__(self, connection: Backend, what: str, key: str | None = None) -> None:
        """*key*: the list or stream read; in a cluster, what its master does not serve does not ride."""
        self._connection = connection
        self._what = what
        self._key = key
        self._lock = threading.Lock()  # guards _commands and _open
        self._commands: list[Args] = []
        self._open = False  # whether the consumer will read again soon

    def send(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool,
        deadline: float | None = None,
    ) -> None:
        """Have *commands* sent: with the next read if one is coming, or now, until *deadline* at least.

        Raises:
            RedisConnectionError: As ``Backend.post()``.
        """
        if self._connection.rides(commands, self._key, atomic=atomic):
            with self._lock:
                if self._open:
                    self._commands += grouped(commands, atomic=atomic)
                    return
        self._connection.post(
            commands, atomic=atomic, what=self._what, deadline=deadline
        )

    def reopen(self) -> None:
        """The consumer is back from a read: collect again until the next one."""
        with self._lock:
            self._open = True

    def take(self) -> list[Args]:
        """What the next read is to carry; until ``reopen()``, workers send on their own."""
        with self._lock:
            self._open = False
            commands, self._commands = self._commands, []
        return commands

    def flush(self) -> None:
        """Send what is collected through the pipe, and collect no more until ``reopen()``."""
        self._post(self.take())

    def answered(self, commands: list[Args], replies: list[object]) -> None:
        self._connection.settle(commands, replies, self._what)

    def failed(self, commands: list[Args], error: RedisRPCError) -> None:
        """The read that carried *commands* failed: send them again, through the pipe.

        The read's connection was most likely dead before they were written
        (Redis restarted while a handler ran): the pipe checks its own and
        reaches Redis again. Should Redis have run them before the
        connection failed, they run twice, which replies, acks and kept
        replies bear: they are sent at least once.
        """
        logger.info("Sending %s again, through the pipe: %s", self._what, error)
        self._post(commands)

    def _post(self, commands: list[Args]) -> None:
        if commands:
            try:
                self._connection.post_args(commands, what=self._what)
            except RedisRPCError as exc:
                Posted(self._what).set_error(exc)
