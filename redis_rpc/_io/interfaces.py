"""What the rest of the library needs from Redis: the I/O seam, as Protocols.

Two layers of it:

- ``Connection``: sending commands, which callers (``publish()``,
  ``request()``) and handlers (their replies) need. The single-server and
  cluster backends implement it, and so does the in-memory one behind
  ``TestRedisBroker``, which routes each command to the broker's own
  handlers instead of Redis.
- ``Backend``: a ``Connection`` plus what serving needs: a blocking
  ``Reader`` per consumer, ``Subscription``\\ s, and the few management
  commands of consumer groups, heartbeats and recovery. The single-server
  (``RedisBackend``, Sentinel included) and cluster (``ClusterBackend``)
  backends implement it, side by side.

Every method raises our own exceptions (``redis_rpc.errors``), never
redis-py's: the backends translate in ``_io.errors``. Backends are safe to
use from any number of threads at once; a ``Reader`` or a ``Subscription``
belongs to the one thread that uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import attrs

if TYPE_CHECKING:
    import threading
    from collections.abc import Sequence

    from redis_rpc._io.commands import Args, Command
    from redis_rpc.errors import RedisRPCError

# What a Pub/Sub connection hands on: (pattern or None, channel, data).
Received: TypeAlias = tuple[bytes | None, bytes, bytes]


class Outcome(Protocol):
    """Told how commands sent without waiting went; called once, on any thread, and must not raise."""

    def set_result(self, value: list[object]) -> None:
        """The replies, in order; an error reply is a ``RedisRPCError`` in its place."""

    def set_error(self, error: RedisRPCError) -> None:
        """Why the commands failed; ``maybe_applied`` says whether they may have run."""


class Owed(Protocol):
    """What a consumer owes Redis (replies, acks), carried by its next blocking read."""

    def take(self) -> list[Args]:
        """The commands to send before the read, in the same write; empties the debt."""

    def answered(self, commands: list[Args], replies: list[object]) -> None:
        """Redis answered the *commands* taken, with *replies*."""

    def failed(self, commands: list[Args], error: RedisRPCError) -> None:
        """The read that carried *commands* failed: they may or may not have run."""


@attrs.frozen
class Beat:
    """One heartbeat key to keep alive.

    Attributes:
        alive: The key that exists while the consumer is alive.
        ttl: Seconds *alive* lives after each refresh.
        registry: A set that lists every consumer that beats, so that live
            consumers know whose missing key means death.
        member: The consumer's name in *registry*.
    """

    alive: str
    ttl: float
    registry: str
    member: str


class Reader(Protocol):
    """One connection for one consumer thread's blocking reads; it connects on first use.

    Each read first writes what *owed* holds, in the same write. Not
    thread-safe. Every method raises ``RedisConnectionError`` when the
    connection fails (it is then closed, and the next read opens another)
    and ``RedisCommandError`` when Redis refuses the read.
    """

    def blpop(self, key: str, timeout: float, *, owed: Owed) -> bytes | None:
        """Pop the head of list *key*, waiting up to *timeout* seconds for one."""

    def blmpop(
        self, key: str, timeout: float, count: int, *, owed: Owed
    ) -> list[bytes]:
        """Pop up to *count* items of list *key*, waiting up to *timeout* seconds for the first."""

    def blmove(
        self, source: str, destination: str, timeout: float, *, owed: Owed
    ) -> bytes | None:
        """Move the head of list *source* to the head of *destination*, waiting up to *timeout* seconds."""

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
        """Read up to *count* new entries for *consumer*, waiting up to *block* seconds."""

    def close(self) -> None:
        """Drop the connection; the next read opens another. Never raises."""


class Subscription(Protocol):
    """One Pub/Sub connection; it connects on first use and never reconnects by itself.

    Not thread-safe: the thread that creates it must be the only one to
    use and close it. After any error it is useless: close it and open
    another, which subscribes afresh.
    """

    def subscribe(self, channel: str, *, pattern: bool, timeout: float) -> None:
        """Subscribe to *channel* and wait until Redis confirms it."""

    def subscribe_many(
        self,
        channels: Sequence[str],
        *,
        pattern: bool,
        timeout: float,
        stop: threading.Event | None = None,
        sharded: bool = False,
    ) -> None:
        """Subscribe to all *channels* and wait until Redis confirms each."""

    def get_messages(self, timeout: float, limit: int = ...) -> list[Received]:
        """Wait up to *timeout* seconds for published messages; return up to *limit* of them."""

    def get_message(self, timeout: float) -> tuple[bytes, bytes] | None:
        """Wait up to *timeout* seconds for one published message; return (channel, data)."""

    def close(self) -> None:
        """Close the connection; never raises."""


class Connection(Protocol):
    """Sends commands to Redis, or where Redis would deliver them; see the module's docstring."""

    # Where Redis is, for messages; never the URL, which may hold a password.
    address: str
    # Seconds one command may take at most.
    socket_timeout: float

    @property
    def cluster(self) -> bool:
        """Whether this is a Redis Cluster, whose keys live on several nodes."""

    @property
    def used(self) -> bool:
        """Whether this connection opened a socket or started a thread of ours."""

    def execute(self, command: Command, *, deadline: float | None = None) -> Any:
        """Run one command; return what Redis answered.

        *deadline* is a ``time.monotonic()`` time to give up by; by default
        ``socket_timeout`` from now.
        """

    def execute_many(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        deadline: float | None = None,
    ) -> list[Any]:
        """Run several commands in one write (in a ``MULTI`` when *atomic*); return the answers."""

    def post(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        what: str,
        deadline: float | None = None,
    ) -> None:
        """Send *commands* without waiting; a failure or refusal is logged, as concerning *what*.

        *deadline* (``time.monotonic()``) is how long sending them is of
        use, such as a reply's caller's deadline: they are not given up
        before it, nor before ``socket_timeout`` from now.
        """

    def send(
        self, command: Command, *, deadline: float | None, outcome: Outcome
    ) -> None:
        """Send *command* without waiting; *outcome* hears how it went."""

    def ping(self) -> None:
        """Check that Redis answers."""

    def close(self) -> None:
        """Write what is queued, then close every connection; idempotent."""

    def after_fork(self) -> None:
        """Forget the parent's connections and threads, in a forked child."""


class Admin(Protocol):
    """The commands that manage consumers: heartbeats, recovery, consumer groups.

    Each call borrows a connection for its own round trip: they are rare,
    and none of them is on the path of a request.
    """

    def server_time_ms(self) -> int:
        """The Redis server's clock, in milliseconds since the epoch: the time stream ids count."""

    def heartbeat(self, beats: Sequence[Beat]) -> None:
        """Refresh every heartbeat key in *beats*, and list each consumer in its registry."""

    def members(self, key: str) -> list[str]:
        """The members of set *key*, decoded and sorted."""

    def requeue_if_dead(
        self, *, alive: str, processing: str, source: str, registry: str, member: str
    ) -> int | None:
        """Unless key *alive* exists, move list *processing* back to the head of *source*.

        Returns how many items moved, or None when the consumer is alive.
        """

    def create_group(self, stream: str, group: str, start: bytes) -> bool:
        """Create consumer *group* on *stream* to read after *start*; False if it exists."""

    def consumer_idle_times(self, stream: str, group: str) -> dict[str, float]:
        """Each consumer of *group* and the seconds since it last read or claimed."""

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
        """Unless key *alive* exists, claim for *consumer* up to *count* entries pending for *dead*.

        Returns None when *dead* is alive after all; else the claimed
        entries with their fields and deliveries (empty once *dead* is
        deleted from the group).
        """

    def xautoclaim(
        self, stream: str, group: str, consumer: str, min_idle: float, start: bytes
    ) -> tuple[bytes, tuple[bytes, dict[bytes, bytes] | None] | None]:
        """Claim the first entry from *start* pending for *min_idle* seconds; the next cursor and the entry."""

    def deliveries(self, stream: str, group: str, entry_id: bytes) -> int:
        """How many times *entry_id* has been delivered in *group*; 0 if it is not pending."""


class Backend(Connection, Protocol):
    """A ``Connection`` that can also serve: readers, subscriptions, consumer groups."""

    def reader(self) -> Reader:
        """A connection for one consumer thread's blocking reads."""

    def subscription(self, shard: str | None = None) -> Subscription:
        """A new Pub/Sub connection, to be owned by the calling thread.

        *shard*: a sharded channel it is for; in a cluster, its slot's master.
        """

    def companion(self, key: str, suffix: str) -> str:
        """The name of a key that goes with *key* (a processing list, dead letters), on its slot."""

    def rides(
        self, commands: Sequence[Command], key: str | None, *, atomic: bool
    ) -> bool:
        """Whether *commands* may go with a consumer's next blocking read on *key*."""

    def post_args(self, commands: list[Args], *, what: str) -> None:
        """``post()`` for commands already spelled out as words."""

    def settle(self, commands: list[Args], replies: list[object], what: str) -> None:
        """Check the *replies* to *commands* carried by a read: log a failure, send a redirected one on."""

    def server_version(self) -> str:
        """The ``redis_version`` that ``INFO server`` reports, or ``"unknown"``."""

    @property
    def admin(self) -> Admin:
        """The management commands of heartbeats, recovery and consumer groups."""
