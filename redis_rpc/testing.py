"""Test helpers: ``TestRedisBroker`` runs a broker's handlers in memory; ``RedisServer`` runs a private ``redis-server``."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any
from unittest.mock import MagicMock

import attrs

from redis_rpc._io.commands import Publish, RPush, XAdd
from redis_rpc._memory import (
    RecordingHandler,
    Tapped,
    check_new,
    leave_memory,
    serve_in_memory,
)
from redis_rpc._wire.message import RedisMessage
from redis_rpc._wire.schemas import ListSub, PubSub
from redis_rpc.errors import BrokerStateError, MessageDecodeError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from redis_rpc._broker import RedisBroker
    from redis_rpc._io.commands import Command
    from redis_rpc._server.model import Subscriber
    from redis_rpc._wire.schemas import Destination

__all__ = ["RedisServer", "TestRedisBroker"]

_MISSING = object()


class TestRedisBroker:
    """Runs a broker's handlers in memory, with no Redis and no network, for the broker's own tests.

    ``with TestRedisBroker(broker) as br:`` hands back *broker* itself,
    serving in memory until the block ends: its ``request()`` and
    ``publish()`` (and those its handlers make) encode, sign and
    size-check as ever, and each message is handled at once, on the
    calling thread, by the broker's own consumers: typed validation,
    error replies raised as ``RemoteError``, ``Response`` headers and
    ``@broker.publisher`` routing, channel patterns and templates, lists
    and streams. What handlers send (results to ``@broker.publisher``
    destinations, their own ``request()`` and ``publish()``) is handled
    the same way, nested inside them, so ``publish()`` returns once every
    handler it reached has run, and a test may check their effects right
    after it. Nothing is written anywhere, no thread is started, and
    *broker* is left as it was (never started) when the block ends.

    A request that no handler answers fails at once with the error the
    real broker raises: ``NoSubscriberError`` on a channel nobody
    subscribes to, ``RequestTimeoutError`` otherwise (a list or stream
    without a subscriber, or a handler that sends no reply), without
    waiting for the timeout, since nothing else could answer later.
    A handler's exception on a message sent by ``publish()`` is logged,
    as by the real broker, not raised. A stream entry whose handler
    failed is not delivered again.

    Each handler function gets a ``mock`` attribute for the duration of
    the block: a ``unittest.mock.MagicMock`` called with the body of each
    message that reaches the handler, decoded by its content type (before
    it is structured into the parameter's type, so invalid bodies are
    recorded too). ``mock(handler)`` returns the same object for code
    that is type-checked, and still after the block. Each block starts
    with fresh mocks. The ``mock`` of a publisher from
    ``broker.publisher(...)`` records, the same way, each body the broker
    sends to its destination: handlers' results routed to it, its own
    ``publish()``, and ``broker.publish()`` or ``request()`` to it.
    Outside a block, either ``mock`` raises ``BrokerStateError`` saying
    that it is not under a test broker.

    With ``with_real=True`` the same block runs against the Redis that
    *broker* points at: entering starts *broker* and leaving closes it,
    and the mocks record as in memory. Messages then take their real
    path, so ``publish()`` returns before the handlers run: wait for
    their mocks with a deadline, or use ``request()``.

    The broker must be new (never started); it may be used by one block at
    a time. Inside an in-memory block, ``start()`` raises
    ``BrokerStateError`` (the broker already counts as running) and
    ``close()`` closes the broker. Safe to use from several threads inside
    the block, but in memory, handlers then run concurrently whatever their
    ``max_workers``.

    Args:
        broker: The broker to test.
        with_real: Serve on Redis instead of in memory.

    Raises:
        BrokerStateError: On entering, when *broker* was started, closed, or
            is already in a ``TestRedisBroker`` block.
        RedisConnectionError: On entering with *with_real*, as ``start()``.
    """

    __test__ = False  # not a test class, whatever its name says to pytest

    def __init__(self, broker: RedisBroker, *, with_real: bool = False) -> None:
        self.broker = broker
        self.with_real = with_real
        self._mocks: list[tuple[Callable[..., Any], MagicMock]] = []
        # Functions given a mock attribute, and what that attribute was before.
        self._attached: list[tuple[Callable[..., Any], object]] = []
        self._lock = threading.Lock()  # guards _sent: handlers may send from any thread
        self._sent: dict[tuple[str, str, bool], MagicMock] = {}

    def __repr__(self) -> str:
        return (
            f"<TestRedisBroker {self.broker!r}{' with_real' if self.with_real else ''}>"
        )

    def __enter__(self) -> RedisBroker:
        self._mocks, self._attached, self._sent = [], [], {}
        if self.with_real:
            _serve_for_real(self.broker, self)
        else:
            serve_in_memory(self.broker, self)
        return self.broker

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.with_real:
                _leave_real(self.broker)
            else:
                leave_memory(self.broker)
        finally:
            for func, before in self._attached:
                if before is _MISSING:
                    del func.mock  # type: ignore[attr-defined]
                else:
                    func.mock = before  # type: ignore[attr-defined]
            self._attached = []

    # -- what the broker calls while the block runs (_publisher.Recorder) ----

    def wrap(self, subscriber: Subscriber) -> Subscriber:
        """*subscriber*, its handler recording each body in its mock first, its publishers' results seen."""
        handler = subscriber.handler
        mock = self._find(handler.func) or self._new_mock(handler.func)
        return attrs.evolve(
            subscriber, handler=RecordingHandler(handler, mock), observe=self.saw
        )

    def saw(self, command: Command) -> None:
        """Record the body that *command* sends, if it sends one, in its destination's mock."""
        if isinstance(command, Publish):
            key = ("channel", command.channel, command.sharded)
        elif isinstance(command, RPush):
            key = ("list", command.key, False)
        elif isinstance(command, XAdd):
            key = ("stream", command.stream, False)
        else:
            return
        try:
            body = RedisMessage.from_payload(command.data).decode()
        except MessageDecodeError:
            return  # the real broker would not have sent it
        self._sent_mock(key)(body)

    def sent_to(self, destination: Destination) -> MagicMock:
        """The mock of each body sent to *destination* in the current block."""
        if isinstance(destination, PubSub):
            return self._sent_mock(
                ("channel", destination.channel, destination.sharded)
            )
        kind = "list" if isinstance(destination, ListSub) else "stream"
        return self._sent_mock((kind, destination.name, False))

    def _sent_mock(self, key: tuple[str, str, bool]) -> MagicMock:
        with self._lock:
            mock = self._sent.get(key)
            if mock is None:
                mock = self._sent[key] = MagicMock(name=f"{key[0]}:{key[1]}.mock")
            return mock

    # -- handlers' mocks -------------------------------------------------------

    def mock(self, handler: Callable[..., Any]) -> MagicMock:
        """The mock that records the bodies *handler* received in the current (or last) block.

        Raises:
            BrokerStateError: *handler* is not a subscriber of the broker, or
                no block has been entered yet.
        """
        mock = self._find(handler)
        if mock is None:
            name = getattr(handler, "__qualname__", repr(handler))
            msg = f"{name} is not a handler of this broker, or no TestRedisBroker block has been entered yet."
            raise BrokerStateError(msg)
        return mock

    def _find(self, func: Callable[..., Any]) -> MagicMock | None:
        # Not by hash: a callable object need not be hashable. By equality,
        # because each access to a bound method makes a new, equal, object.
        return next(
            (mock for known, mock in self._mocks if known is func or known == func),
            None,
        )

    def _new_mock(self, func: Callable[..., Any]) -> MagicMock:
        name = getattr(func, "__qualname__", "handler")
        mock = MagicMock(name=f"{name}.mock")
        self._mocks.append((func, mock))
        before = getattr(func, "mock", _MISSING)
        try:
            func.mock = mock  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # a bound method, a builtin: mock() only
            return mock
        self._attached.append((func, before))
        return mock


def _serve_for_real(broker: RedisBroker, recorder: TestRedisBroker) -> None:
    """Start *broker* on Redis, recording in *recorder*, until ``_leave_real()``.

    Raises:
        BrokerStateError: The broker is not new.
        RedisConnectionError: As ``start()``.
    """
    with broker._lock:
        check_new(broker)
        broker._connection = Tapped(broker._connection, recorder)
        broker._recorder = recorder
        # Only for start(), which serves them wrapped; the declarations come back after.
        declared, broker._subscribers = (
            broker._subscribers,
            [recorder.wrap(sub) for sub in broker._subscribers],
        )
    try:
        broker.start()
    except BaseException:
        _leave_real(broker)
        raise
    finally:
        with broker._lock:
            broker._subscribers = declared


def _leave_real(broker: RedisBroker) -> None:
    """Close *broker*, started by ``_serve_for_real()``, and stop recording."""
    try:
        broker.close()
    finally:
        with broker._lock:
            connection = broker._connection
            if isinstance(connection, Tapped):
                broker._connection = connection.inner
            broker._recorder = None


class RedisServer:
    """A throwaway ``redis-server`` process on 127.0.0.1, keeping nothing on disk.

    ``start()`` picks a free port (or reuses the last one, so that a test
    can kill the server and bring it back where clients expect it) and
    returns once the server answers ``PING``. Not thread-safe: one owner.

    Args:
        executable: The ``redis-server`` binary; found on ``PATH`` by default.
        startup_timeout: Seconds ``start()`` waits for the server to answer.
        extra_args: More ``redis-server`` options, such as
            ``("--cluster-enabled", "yes")`` or ``("--replicaof", host, port)``.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            msg = "redis-server is not on PATH; install it (Debian: apt-get install redis-server)."
            raise FileNotFoundError(msg)
        self.executable = found
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers.

        Raises:
            RuntimeError: The server exited or did not answer in time.
        """
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="redis_rpc-")
        if not self.port:
            self.port = _free_port()
        args = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            *self.extra_args,
        ]
        self._process = subprocess.Popen(  # noqa: S603 - a fixed argv, no shell
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                msg = f"redis-server exited with code {self._process.returncode} on port {self.port}."
                raise RuntimeError(msg)
            if _answers_ping(self.port):
                return
            time.sleep(0.02)  # polling a child process we cannot wait on otherwise
        self.stop()
        msg = f"redis-server did not answer on port {self.port} within {self.startup_timeout} s."
        raise RuntimeError(msg)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP the server: its connections stay open but nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the server, killing it if it does not exit promptly."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a paused server cannot exit
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
