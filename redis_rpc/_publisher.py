"""``Publisher``, what ``broker.publisher()`` returns; and the ``mock`` of a handler outside a test broker.

As FastStream's publisher object: it decorates a handler, whose results
then also go to its destination; it publishes there itself; and under
``TestRedisBroker`` its ``mock`` records every body the broker sends
there. Outside a ``TestRedisBroker`` block, a publisher's ``mock`` and a
handler's ``mock`` attribute say that they are not under a test broker,
as FastStream's do, instead of failing with an ``AttributeError``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

from redis_rpc._wire.schemas import ListSub, PubSub, StreamSub
from redis_rpc.errors import BrokerStateError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from unittest.mock import MagicMock

    from redis_rpc._io.commands import Command
    from redis_rpc._server.model import Subscriber
    from redis_rpc._wire.schemas import Destination

F = TypeVar("F", bound="Callable[..., Any]")

# As long as socket_timeout's default: what a publish() took at most before
# it had a timeout of its own.
DEFAULT_PUBLISH_TIMEOUT = 10.0


class Recorder(Protocol):
    """What a ``TestRedisBroker`` block records a broker's handlers and sends in."""

    def wrap(self, subscriber: Subscriber) -> Subscriber:
        """*subscriber*, recording what its handler receives and what it sends to publishers."""

    def saw(self, command: Command) -> None:
        """Record *command*, if it sends a message, as sent to its destination."""

    def sent_to(self, destination: Destination) -> MagicMock:
        """The mock called with each body sent to *destination* during the block."""


class Publisher:
    """A destination for handlers' results, returned by ``broker.publisher()``; see there.

    Safe to use from any number of threads at once.

    Attributes:
        destination: Where it publishes, such as ``ListSub("shipping")``.
    """

    def __init__(
        self,
        destination: Destination,
        declare: Callable[[Callable[..., Any]], object],
        publish: Callable[..., int | str],
        recorder: Callable[[], Recorder | None],
    ) -> None:
        self.destination = destination
        self._declare = declare
        self._publish = publish
        self._recorder = recorder

    def __repr__(self) -> str:
        return f"<Publisher {self.destination}>"

    def __call__(self, func: F) -> F:
        """Also publish *func*'s results here; *func* is returned unchanged.

        Raises:
            SetupError: The broker was started already.
        """
        self._declare(func)
        return func

    def publish(
        self,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str = "",
        maxlen: int | None = None,
        timeout: float | None = DEFAULT_PUBLISH_TIMEOUT,
    ) -> int | str:
        """``broker.publish()`` to this publisher's destination; the arguments, result and errors are that method's."""
        target = self.destination
        return self._publish(
            body,
            target if isinstance(target, PubSub) else None,
            list=target if isinstance(target, ListSub) else None,
            stream=target if isinstance(target, StreamSub) else None,
            headers=headers,
            correlation_id=correlation_id,
            reply_to=reply_to,
            maxlen=maxlen,
            timeout=timeout,
        )

    @property
    def mock(self) -> MagicMock:
        """Inside a ``TestRedisBroker`` block, a ``MagicMock`` called with each body the broker sends to the destination.

        Whoever sends it: this publisher, ``broker.publish()``, or a handler's
        result. The body is decoded by its content type, as a handler's mock
        records it. Each block starts with a fresh mock.

        Raises:
            BrokerStateError: The broker is not in a ``TestRedisBroker`` block.
        """
        recorder = self._recorder()
        if recorder is None:
            _not_under_test(f"The publisher to {self.destination}")
        return recorder.sent_to(self.destination)


class Unmocked:
    """A handler's ``mock`` attribute outside a ``TestRedisBroker`` block: any use says so."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<{self._name}.mock: not under a test broker>"

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):  # copy, pickle and friends probe for these
            raise AttributeError(name)
        _not_under_test(f"Handler {self._name}")

    def __call__(self, *args: object, **kwargs: object) -> NoReturn:
        _not_under_test(f"Handler {self._name}")


def unmocked(func: Callable[..., Any]) -> None:
    """Give handler *func* a ``mock`` attribute that says it is not under a test broker, unless it has one."""
    if hasattr(func, "mock"):
        return
    name = getattr(func, "__qualname__", type(func).__name__)
    # A bound method or a builtin takes no attribute: nothing to say it on.
    with contextlib.suppress(AttributeError, TypeError):
        func.mock = Unmocked(name)  # type: ignore[attr-defined]


def _not_under_test(what: str) -> NoReturn:
    msg = f"{what} is not under a test broker: use its mock inside `with TestRedisBroker(broker):`."
    raise BrokerStateError(msg)
