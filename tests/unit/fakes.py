"""A fake of the I/O seam for unit tests: a ``Backend`` that records what it is asked and reaches no Redis.

It implements the Protocols of ``redis_rpc._io.interfaces`` (mypy checks
it, below), so unit tests drive consumers, the reply listener and the
broker's parts exactly as the real backends would, without a socket.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any

from redis_rpc._io.commands import Get, Set
from redis_rpc.errors import RedisConnectionError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis_rpc._io.commands import Args, Command
    from redis_rpc._io.interfaces import (
        Admin,
        Backend,
        Beat,
        Outcome,
        Owed,
        Reader,
        Received,
        Subscription,
    )


class FakeSubscription:
    """A Pub/Sub connection that confirms every subscription and hands out what the test queued."""

    def __init__(self, backend: FakeBackend) -> None:
        self._backend = backend
        self.channels: list[tuple[str, bool]] = []  # (name, pattern)
        self.closed = False

    def subscribe(self, channel: str, *, pattern: bool, timeout: float) -> None:
        self.subscribe_many([channel], pattern=pattern, timeout=timeout)

    def subscribe_many(
        self,
        channels: Sequence[str],
        *,
        pattern: bool,
        timeout: float,
        stop: threading.Event | None = None,
        sharded: bool = False,
    ) -> None:
        if self._backend.down:
            msg = "Redis is down (fake)."
            raise RedisConnectionError(msg)
        self.channels += [(name, pattern) for name in channels]
        with self._backend.changed:
            self._backend.subscribed += 1
            self._backend.changed.notify_all()

    def get_messages(self, timeout: float, limit: int = 1000) -> list[Received]:
        with self._backend.changed:
            self._backend.changed.wait_for(
                lambda: self._backend.published or self._backend.down, timeout
            )
            if self._backend.down:
                msg = "Lost Redis (fake)."
                raise RedisConnectionError(msg)
            found: list[Received] = []
            while self._backend.published and len(found) < limit:
                found.append(self._backend.published.popleft())
            return found

    def get_message(self, timeout: float) -> tuple[bytes, bytes] | None:
        found = self.get_messages(timeout, limit=1)
        return (found[0][1], found[0][2]) if found else None

    def close(self) -> None:
        self.closed = True


class FakeReader:
    """A blocking reader over the fake's lists; streams stay empty.

    It records which threads read through it, and what its reads carried.
    """

    def __init__(self, backend: FakeBackend) -> None:
        self._backend = backend

    def blpop(self, key: str, timeout: float, *, owed: Owed) -> bytes | None:
        found = self.blmpop(key, timeout, 1, owed=owed)
        return found[0] if found else None

    def blmpop(
        self, key: str, timeout: float, count: int, *, owed: Owed
    ) -> list[bytes]:
        backend = self._backend
        with backend.changed:
            backend.readers.append(threading.current_thread().name)
            backend.reading += 1
            backend.most_reading = max(backend.most_reading, backend.reading)
        try:
            taken = owed.take()
            backend.carried += taken
            owed.answered(taken, [1] * len(taken))
            items = backend.lists[key]
            with backend.changed:
                backend.changed.wait_for(lambda: bool(items), timeout)
                return [items.popleft() for _ in range(min(count, len(items)))]
        finally:
            with backend.changed:
                backend.reading -= 1

    def blmove(
        self, source: str, destination: str, timeout: float, *, owed: Owed
    ) -> bytes | None:
        return self.blpop(source, timeout, owed=owed)

    def xreadgroup(
        self,
        stream: str,
        group: str,
        consumer: str,
        block: float,
        count: int,
        *,
        owed: Owed,
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        return []

    def close(self) -> None:
        pass


class FakeAdmin:
    """Consumer management that keeps everything in dictionaries."""

    def __init__(self) -> None:
        self.beats: list[Beat] = []
        self.sets: dict[str, set[str]] = collections.defaultdict(set)

    def server_time_ms(self) -> int:
        return 1_700_000_000_000

    def heartbeat(self, beats: Sequence[Beat]) -> None:
        self.beats += beats
        for beat in beats:
            self.sets[beat.registry].add(beat.member)

    def members(self, key: str) -> list[str]:
        return sorted(self.sets[key])

    def requeue_if_dead(
        self, *, alive: str, processing: str, source: str, registry: str, member: str
    ) -> int | None:
        return None

    def create_group(self, stream: str, group: str, start: bytes) -> bool:
        return True

    def consumer_idle_times(self, stream: str, group: str) -> dict[str, float]:
        return {}

    def claim_from_dead(
        self,
        *,
        stream: str,
        group: str,
        consumer: str,
        dead: str,
        alive: str,
        registry: str,
        count: int,
    ) -> list[tuple[bytes, dict[bytes, bytes], int]] | None:
        return None

    def xautoclaim(
        self, stream: str, group: str, consumer: str, min_idle: float, start: bytes
    ) -> tuple[bytes, tuple[bytes, dict[bytes, bytes] | None] | None]:
        return b"0-0", None

    def deliveries(self, stream: str, group: str, entry_id: bytes) -> int:
        return 0


class FakeBackend:
    """A ``Backend`` that records every command and answers each with 1.

    ``publish(channel, data)`` queues a message for the subscriptions;
    ``lists[key]`` feeds the readers; ``down = True`` makes subscribing and
    reading fail, as when Redis goes away.
    """

    address = "fake:0"
    socket_timeout = 1.0
    cluster = False

    def __init__(self) -> None:
        self.sent: list[Command] = []  # every command, in order
        self.keys: dict[str, bytes] = {}  # what SET wrote, for GET
        self.posted: list[tuple[list[Command], str]] = []  # (commands, what)
        self.admin: Admin = FakeAdmin()
        self.lists: dict[str, collections.deque[bytes]] = collections.defaultdict(
            collections.deque
        )
        # Guards published, subscribed and down; notified on every change.
        self.changed = threading.Condition()
        self.published: collections.deque[Received] = collections.deque()
        self.subscribed = 0
        self.down = False
        self.closed = False
        # What readers did: who read, how many at once at most, what rode along.
        self.readers: list[str] = []
        self.reading = 0
        self.most_reading = 0
        self.carried: list[Args] = []

    def push(self, key: str, *items: bytes) -> None:
        """Append *items* to list *key*, waking a reader."""
        with self.changed:
            self.lists[key].extend(items)
            self.changed.notify_all()

    @property
    def used(self) -> bool:
        return bool(self.sent)

    def publish(
        self, channel: bytes, data: bytes, pattern: bytes | None = None
    ) -> None:
        with self.changed:
            self.published.append((pattern, channel, data))
            self.changed.notify_all()

    def set_down(self, down: bool) -> None:
        with self.changed:
            self.down = down
            self.changed.notify_all()

    def execute(self, command: Command, *, deadline: float | None = None) -> Any:
        self.sent.append(command)
        if isinstance(command, Set):
            self.keys[command.key] = command.data
        elif isinstance(command, Get):
            return self.keys.get(command.key)
        return 1

    def execute_many(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        deadline: float | None = None,
    ) -> list[Any]:
        return [self.execute(command) for command in commands]

    def post(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        what: str,
        deadline: float | None = None,
    ) -> None:
        self.sent += commands
        self.posted.append((list(commands), what))

    def post_args(self, commands: list[Args], *, what: str) -> None:
        pass

    def send(
        self, command: Command, *, deadline: float | None, outcome: Outcome
    ) -> None:
        self.sent.append(command)
        outcome.set_result([1])

    def ping(self) -> None:
        if self.down:
            msg = "Redis is down (fake)."
            raise RedisConnectionError(msg)

    def close(self) -> None:
        self.closed = True

    def after_fork(self) -> None:
        pass

    def reader(self) -> Reader:
        return FakeReader(self)

    def subscription(self, shard: str | None = None) -> Subscription:
        return FakeSubscription(self)

    def companion(self, key: str, suffix: str) -> str:
        return key + suffix

    def rides(
        self, commands: Sequence[Command], key: str | None, *, atomic: bool
    ) -> bool:
        return True

    def settle(self, commands: list[Args], replies: list[object], what: str) -> None:
        pass

    def server_version(self) -> str:
        return "7.0.0-fake"


if TYPE_CHECKING:  # mypy holds the fake to the seam it stands in for
    _backend: Backend = FakeBackend()
    _subscription: Subscription = FakeSubscription(FakeBackend())
    _reader: Reader = FakeReader(FakeBackend())
    _admin: Admin = FakeAdmin()
