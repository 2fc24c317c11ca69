"""What ``publish()`` and ``request()`` do once the broker has let them through.

``Caller`` runs the hooks around each call and counts it per
destination, builds the frame (the body, our protocol headers, the
signature), checks its size and sends it through a ``Connection``. For a
request it also takes a reply channel and a nonce from the
``ReplyListener``, tells the server when the caller stops waiting, waits,
and turns what came back, or did not, into the reply or the exception
that says what happened. A request made from inside a handler never waits
past the deadline of that handler's own caller (``nested_timeout()``).
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import time
import types
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

from redis_rpc import _context
from redis_rpc._client.listener import Sent
from redis_rpc._hooks import (
    MAX_COUNTED_DESTINATIONS,
    OTHER_DESTINATIONS,
    DestinationCounter,
    Event,
    around,
    outcome_of,
)
from redis_rpc._io.commands import Publish, send_command
from redis_rpc._latch import Latch
from redis_rpc._wire.cancel import CANCEL_CHANNEL, notice
from redis_rpc._wire.glob import matches
from redis_rpc._wire.message import (
    ACCEPT_ERRORS,
    DEADLINE,
    DESTINATION,
    IDEMPOTENCY_KEY,
    KEEP,
    NONCE,
    OVERLOADED,
    REFUSED_CALLER_HAS_NO_KEY,
    REFUSED_EXPIRED,
    REFUSED_KEYS_DIFFER,
    REFUSED_SERVER_HAS_NO_KEY,
    REPLY_SHARD,
    REPLY_TO,
    RedisMessage,
    check_body_size,
    check_size,
    frame_parts,
    new_correlation_id,
    retry_after,
)
from redis_rpc._wire.schemas import PubSub, subscription
from redis_rpc._wire.signing import signed_frame
from redis_rpc.errors import (
    BrokerStateError,
    NoSubscriberError,
    OverloadedError,
    RedisConnectionError,
    RedisRPCError,
    RemoteError,
    RequestTimeoutError,
    SetupError,
    SigningKeyError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    import cattrs

    from redis_rpc._client.listener import Pending, ReplyListener, Sink
    from redis_rpc._hooks import DestinationStats, Hook
    from redis_rpc._io.interfaces import Connection
    from redis_rpc._wire.schemas import Destination
    from redis_rpc.errors import SigningKeyReason

P = ParamSpec("P")
T = TypeVar("T")


# A server that found a request expired while its caller still had this
# many seconds to wait has a clock ahead of the caller's: more than the
# time a notice takes to come back, less than any skew worth naming.
CLOCK_SKEW_NOTICE = 0.5

# SigningKeyError.reason, by the code of a server's refusal.
_KEY_REASONS: dict[str, SigningKeyReason] = {
    REFUSED_CALLER_HAS_NO_KEY: "caller_has_no_key",
    REFUSED_KEYS_DIFFER: "keys_differ",
    REFUSED_SERVER_HAS_NO_KEY: "server_has_no_key",
}


class Ask(NamedTuple):
    """A request as its caller made it: what goes where, how long to wait, and through what.

    *listener* returns the broker's reply listener, started on first use;
    *own* are the broker's processors: a handler of theirs may not request
    its own single-worker subscriber.
    """

    connection: Connection
    listener: Callable[[], ReplyListener]
    body: Any
    target: Destination
    headers: Mapping[str, str] | None
    correlation_id: str | None
    timeout: float | None
    fail_fast: bool
    own: Collection[object]


class Caller:
    """Sends requests and events for one broker. Safe to use from any number of threads at once.

    Args:
        converter: Unstructures bodies and structures replies.
        signing_key: Signs what is sent, and checks the replies.
        max_message_size: The longest frame sent or reply taken, in bytes.
        start_timeout: How long a request with no timeout waits for the
            reply subscription to come up.
        hooks: Run around every publish and request.
    """

    def __init__(
        self,
        *,
        converter: cattrs.Converter,
        signing_key: bytes | None,
        max_message_size: int | None,
        start_timeout: float,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self._converter = converter
        self._signing_key = signing_key
        self._max_message_size = max_message_size
        self._start_timeout = start_timeout
        self._hooks = tuple(hooks)
        # What publish() and request() did, by destination; see stats().
        self._destinations: dict[str, DestinationCounter] = {}

    def stats(self) -> dict[str, DestinationStats]:
        """What was sent, by destination."""
        return {
            key: counter.snapshot() for key, counter in list(self._destinations.items())
        }

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return self._hooks

    def count(self, target: Destination, outcome: str, seconds: float) -> None:
        """Count one request to *target* that ended with *outcome* after *seconds*."""
        self._counter(target).requested(outcome, seconds)

    def count_error(
        self, target: Destination, error: BaseException, seconds: float
    ) -> None:
        """Count one request to *target* that failed with *error* after *seconds*."""
        self._counter(target).requested(outcome_of(error), seconds)

    def cancel(self, connection: Connection, reply_to: str) -> None:
        """Tell the servers that the request answered on *reply_to* is given up (see ``_wire.cancel``).

        Sent without waiting; a failure is logged.
        """
        connection.post(
            [Publish(CANCEL_CHANNEL, notice(reply_to, self._signing_key))],
            what="a cancel notice",
        )

    def _counter(self, target: Destination) -> DestinationCounter:
        key = str(target)
        counter = self._destinations.get(key)
        if counter is None:
            if len(self._destinations) >= MAX_COUNTED_DESTINATIONS:
                key = OTHER_DESTINATIONS  # so many names: count the rest together
            counter = self._destinations.setdefault(key, DestinationCounter())
        return counter

    def publish(
        self,
        connection: Connection,
        body: Any,
        target: Destination,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str,
        maxlen: int | None,
        timeout: float | None,
    ) -> int | str:
        """Send *body* to *target* through *connection*; see ``RedisBroker.publish()``."""
        check_timeout(timeout)
        counter = self._counter(target)
        if not self._hooks:
            result = self._publish(
                connection,
                body,
                target,
                headers,
                correlation_id,
                reply_to,
                maxlen,
                timeout,
            )
            counter.published()
            return result
        # Picked here rather than in _publish(), so that hooks see it.
        correlation_id = correlation_id or new_correlation_id()
        event = Event("publish", str(target), dict(headers or {}), correlation_id)
        result = around(
            self._hooks,
            event,
            lambda: self._publish(
                connection,
                body,
                target,
                event.headers,
                correlation_id,
                reply_to,
                maxlen,
                timeout,
            ),
        )
        counter.published()
        return result

    def request(self, ask: Ask) -> RedisMessage:
        """Send a request and wait for its reply; see ``RedisBroker.request()``."""
        check_timeout(ask.timeout)
        counter = self._counter(ask.target)
        if not self._hooks:
            started = time.monotonic()
            try:
                reply = self._request(ask)
            except BaseException as exc:
                counter.requested(outcome_of(exc), time.monotonic() - started)
                raise
            counter.requested("ok", time.monotonic() - started)
            return reply
        correlation_id = (
            ask.correlation_id or new_correlation_id()
        )  # for the hooks to see
        event = Event(
            "request", str(ask.target), dict(ask.headers or {}), correlation_id
        )

        def call() -> RedisMessage:
            event.message = self._request(
                ask._replace(headers=event.headers, correlation_id=correlation_id)
            )
            return event.message

        try:
            return around(self._hooks, event, call)
        finally:
            counter.requested(event.outcome, event.duration)

    def _publish(
        self,
        connection: Connection,
        body: Any,
        target: Destination,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str,
        maxlen: int | None,
        timeout: float | None,
    ) -> int | str:
        deadline = None if timeout is None else time.monotonic() + timeout
        # Before any copy: a frame costs as much again as its body.
        check_body_size(body, self._max_message_size, "The message")
        data, all_headers = frame_parts(
            body,
            correlation_id=correlation_id or new_correlation_id(),
            reply_to=reply_to,
            headers=headers,
            converter=self._converter,
        )
        check_body_size(data, self._max_message_size, "The message")
        if self._signing_key is not None:  # under the signature: see _wire.signing
            all_headers[DESTINATION] = str(target)
        frame = signed_frame(data, all_headers, self._signing_key)
        del data, all_headers  # the frame holds them; one copy is enough
        check_size(frame, self._max_message_size, "The message")
        result = connection.execute(
            send_command(target, frame, maxlen, shed=True), deadline=deadline
        )
        if isinstance(result, bytes):
            return result.decode()
        if result < 0:  # a full list or stream refused it: see max_queued
            raise self._overloaded(target, -int(result))
        return int(result)

    def _overloaded(self, target: Destination, waiting: int) -> OverloadedError:
        """The error for a push that *target*'s ``max_queued`` refused, with *waiting* queued."""
        counted = self._counter(target).snapshot()
        # How long a request to it took here, on average: a fair time to come back.
        mean = counted.request_seconds / counted.requests if counted.requests else 1.0
        msg = f"{target} holds {waiting} waiting messages, its max_queued or more, so nothing was sent; retry later, or elsewhere."
        return OverloadedError(
            msg, destination=str(target), queued=waiting, retry_after=max(mean, 0.05)
        )

    def _request(self, ask: Ask) -> RedisMessage:
        latch: Latch[bytes] = Latch()
        call = self.begin(ask, sink=latch)
        try:
            payload = latch.result(call.left())
        except FutureTimeoutError:
            raise call.no_reply() from None
        except RedisConnectionError as exc:
            raise call.not_taken(exc)  # noqa: B904 - chained to its own cause
        finally:
            call.listener.discard(call.reply_to)
        return self.answer(call, payload)

    def begin(
        self,
        ask: Ask,
        *,
        sink: Sink,
        collect: Callable[[bytes], bool] | None = None,
        keep: bool = True,
        extra: Mapping[str, str] | None = None,
        on_count: Callable[[int], None] | None = None,
    ) -> Call:
        """Send the request *ask*, its reply to go to *sink*; return it on its way.

        *collect* takes every acceptable reply instead, saying when the
        last has come (``gather()``, ``stream()``); *keep* asks the server
        to keep a single reply for a lost subscription; *extra* adds headers
        of ours; *on_count* hears how many subscribers Redis says a channel
        request reached. A failure to send fails *sink*, and raises when
        known at once.

        Raises:
            As ``RedisBroker.request()``, when known before the reply is awaited.
        """
        connection, target, headers = ask.connection, ask.target, ask.headers
        timeout, correlation_id = ask.timeout, ask.correlation_id
        check_timeout(timeout)
        timeout = nested_timeout(target, timeout, ask.own)
        if headers and REPLY_TO in headers:
            msg = "request() chooses the reply channel itself; to send the result elsewhere, use publish(reply_to=...)."
            raise SetupError(msg)
        # Before any copy: a frame costs as much again as its body.
        check_body_size(ask.body, self._max_message_size, "The request")
        correlation_id = correlation_id or new_correlation_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        ours = {ACCEPT_ERRORS: "1", **(extra or {})}
        if timeout is not None:  # the server's clock: Unix time, to the millisecond
            ours[DEADLINE] = f"{time.time() + timeout:.3f}"
        listener = ask.listener()
        call = Call(target, correlation_id, timeout, deadline, listener)
        if not listener.wait_ready(self._start_timeout if timeout is None else timeout):
            msg = f"The reply subscription was not up within {timeout} s; no request was sent to {target}."
            raise call.timed_out(msg)
        addressed = str(target)
        pending = listener.register(
            correlation_id, sink=sink, collect=collect, destination=addressed
        )
        call.pending, ours[NONCE] = pending, pending.nonce
        if listener.reply_shard is not None:
            ours[REPLY_SHARD] = listener.reply_shard
        if keep and listener.keeps:  # our listener fetches it after a lost subscription
            ours[KEEP] = "1"
        if self._signing_key is not None:  # under the signature: see _wire.signing
            ours[DESTINATION] = addressed
        try:
            data, all_headers = frame_parts(
                ask.body,
                correlation_id=correlation_id,
                reply_to=pending.channel,
                headers={**headers, **ours} if headers else ours,
                converter=self._converter,
            )
            check_body_size(data, self._max_message_size, "The request")
            frame = signed_frame(data, all_headers, self._signing_key)
            del data, all_headers  # the frame holds them; one copy is enough
            check_size(frame, self._max_message_size, "The request")
            command = send_command(target, frame, shed=True)

            def unheard() -> NoSubscriberError:
                msg = f"Nobody subscribes to {target}, so the request was not delivered; start a consumer (or pass fail_fast=False to wait anyway)."
                return NoSubscriberError(msg, destination=str(target))

            # On a channel, Redis' answer says whether anybody got it.
            # In a cluster, Redis counts the subscribers of one node only.
            counted = isinstance(command, Publish) and (
                command.sharded or not connection.cluster
            )
            call.sent = Sent(
                listener,
                pending.channel,
                unheard if ask.fail_fast and counted else None,
                functools.partial(self._overloaded, target),
                on_count=on_count if counted else None,
            )
            try:  # a failure to send fails the sink, and is in sent.error
                connection.send(command, deadline=deadline, outcome=call.sent)
            except RedisConnectionError as exc:
                call.sent.error = exc
                raise call.not_taken(exc)  # noqa: B904 - chained to its own cause
        except BaseException:
            listener.discard(pending.channel)
            raise
        return call

    def answer(self, call: Call, payload: bytes) -> RedisMessage:
        """The reply *payload* of *call*, or the error it reports.

        Raises:
            RemoteError: The handler raised, or the request did not fit.
            OverloadedError: The server shed the request.
            SigningKeyError: The server refused it: the signing keys do not match.
            RequestTimeoutError: The server skipped it as expired (its clock
                is ahead of ours, or the request waited too long).
            MessageTooLargeError: The reply is over ``max_message_size``.
            MessageDecodeError: The reply is not a readable frame.
        """
        if call.pending is not None and call.pending.recovered:
            self._counter(call.target).recovered()
        reply = self.reply(payload)
        if reply.refused:
            refusal = _refusal(
                reply.refused, str(call.target), call.correlation_id, call.deadline
            )
            if isinstance(refusal, str):
                raise call.timed_out(refusal)
            if refusal is not None:
                raise refusal
        details = reply.error_details()
        if details is None:
            return reply
        if details["type_name"] == OVERLOADED:  # shed by the server
            raise OverloadedError(
                details["remote_message"],
                destination=str(call.target),
                retry_after=retry_after(reply),
            )
        raise RemoteError(
            **details, destination=str(call.target), correlation_id=call.correlation_id
        )

    def reply(self, payload: bytes) -> RedisMessage:
        """*payload* read as a reply; an error reply is returned, not raised.

        Raises:
            MessageTooLargeError: The reply is over ``max_message_size``.
            MessageDecodeError: The reply is not a readable frame.
        """
        check_size(payload, self._max_message_size, "The reply")
        return RedisMessage.from_payload(payload, self._converter)


class Call:
    """One request on its way: where it went, until when its caller waits, where its reply comes."""

    __slots__ = (
        "correlation_id",
        "deadline",
        "listener",
        "pending",
        "sent",
        "target",
        "timeout",
    )

    def __init__(
        self,
        target: Destination,
        correlation_id: str,
        timeout: float | None,
        deadline: float | None,
        listener: ReplyListener,
    ) -> None:
        self.target = target
        self.correlation_id = correlation_id
        self.timeout = timeout
        self.deadline = deadline  # time.monotonic()
        self.listener = listener
        self.pending: Pending | None = None
        self.sent: Sent | None = None

    @property
    def reply_to(self) -> str:
        return "" if self.pending is None else self.pending.channel

    def left(self) -> float | None:
        """Seconds until the caller stops waiting; ``None`` for ever."""
        return (
            None
            if self.deadline is None
            else max(0.0, self.deadline - time.monotonic())
        )

    def timed_out(self, msg: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            msg,
            destination=str(self.target),
            correlation_id=self.correlation_id,
            timeout=self.timeout or 0.0,
        )

    def no_reply(self) -> RequestTimeoutError:
        msg = f"No reply from {self.target} within {self.timeout} s (correlation_id={self.correlation_id!r}); is a consumer running?"
        return self.timed_out(msg)

    def not_taken(self, error: RedisConnectionError) -> RedisRPCError:
        """*error*, or for a request Redis did not take in time, a timeout that says so."""
        sent = None if self.sent is None else self.sent.error
        if self.deadline is None or error.reason != "timeout" or error is not sent:
            return error
        outcome = "may have been delivered" if error.maybe_applied else "was not sent"
        msg = f"Redis did not take the request to {self.target} within {self.timeout} s, so it {outcome} (correlation_id={self.correlation_id!r}); Redis may be stalled or overloaded."
        timed_out = self.timed_out(msg)
        timed_out.__cause__ = error
        return timed_out


def _refusal(
    refused: str, target: str, correlation_id: str, deadline: float | None
) -> SigningKeyError | str | None:
    """What to raise for a reply that says the handler was not run: the error, or a timeout's message.

    ``None`` for a refusal this version does not know, whose error reply
    then becomes a ``RemoteError`` as any other.
    """
    code, _, detail = refused.partition(" ")
    reason = _KEY_REASONS.get(code)
    if reason is not None:
        advice = {
            "caller_has_no_key": "it takes signed requests only, and this broker has no signing_key: give it the servers' key",
            "keys_differ": "the request's signature does not verify with its key: this broker's signing_key differs from the server's",
            "server_has_no_key": "the request is signed, and the server has no signing_key to check it or to sign its reply: give it this broker's key",
        }[reason]
        msg = f"{target} refused the request without running its handler (correlation_id={correlation_id!r}): {advice}."
        return SigningKeyError(
            msg, reason=reason, destination=target, correlation_id=correlation_id
        )
    if code != REFUSED_EXPIRED:
        return None
    # The server found the deadline past: by our clock it may not be yet.
    left = None if deadline is None else deadline - time.monotonic()
    try:
        theirs = float(detail)
    except ValueError:
        theirs = math.nan
    if left is not None and left > CLOCK_SKEW_NOTICE and math.isfinite(theirs):
        # It decided before we heard of it: its clock is at least this far ahead.
        ahead = max(theirs - time.time(), left)
        return f"{target} skipped the request as expired (correlation_id={correlation_id!r}): by its clock the deadline had passed, while this caller still had {left:.1f} s to wait. The clock of its host is at least {ahead:.1f} s ahead of this one's: synchronise the clocks (NTP), or use longer timeouts meanwhile."
    return f"{target} skipped the request: its deadline had passed by the time a consumer came to it (correlation_id={correlation_id!r}); the consumers may be behind."


def forgets_locals(method: Callable[P, T]) -> Callable[P, T]:
    """Have *method* drop, when it raises, what the frames in the traceback hold: see ``forget_locals()``.

    For ``publish()`` and ``request()``: their own frame, which stays in
    the traceback, forgets its arguments (the body) too.
    """

    @functools.wraps(method)
    def forgetting(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except BaseException as exc:
            forget_locals(exc)
            del args, kwargs  # this frame stays in the traceback too
            raise

    return forgetting


def forget_locals(error: BaseException) -> None:
    """Drop what the finished frames of redis_rpc and redis-py in *error*'s tracebacks hold, and in its causes'.

    A failed send's frames hold the body, the frame and redis-py's packed
    copy of it; an exception kept by the caller (in a log record, an error
    tracker, a variable) would keep hundreds of megabytes alive with them.
    A frame also keeps its caller's (``f_back``), which a traceback does
    not list: those are cleared too, up to the first still running. File
    names and line numbers stay; the frames of other code (a hook, a
    converter's) keep their locals for whoever debugs them.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            _forget_frames(tb.tb_frame, seen)
            tb = tb.tb_next
        pending += (current.__cause__, current.__context__)


def _forget_frames(frame: types.FrameType | None, seen: set[int]) -> None:
    """Clear *frame* and its callers while they have finished; never a generator's, which clearing would close."""
    while frame is not None and id(frame) not in seen:
        seen.add(id(frame))
        module = frame.f_globals.get("__name__", "")
        if module.startswith(("redis_rpc.", "redis.")) and not (
            frame.f_code.co_flags & inspect.CO_GENERATOR
        ):
            try:
                frame.clear()
            except RuntimeError:  # still running: so are all its callers
                return
        frame = frame.f_back


def check_timeout(timeout: object) -> None:
    """Refuse a *timeout* that no wait can honour, before anything is sent.

    ``None`` waits for ever; anything else must be a positive, finite
    number of seconds no longer than the longest wait the platform can
    make (``threading.TIMEOUT_MAX``, some 292 years on Linux).

    Raises:
        SetupError: It is not.
    """
    if timeout is None:
        return
    try:
        seconds = (
            float(timeout)
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
            else math.nan
        )
    except OverflowError:  # an int beyond float's range
        seconds = math.inf
    if not 0 < seconds <= threading.TIMEOUT_MAX:  # also refuses nan
        msg = f"timeout must be a positive number of seconds, at most {threading.TIMEOUT_MAX:.0f}, or None to wait for ever; not {timeout!r}. Nothing was sent."
        raise SetupError(msg)


def nested_timeout(
    target: Destination, timeout: float | None, own: Collection[object]
) -> float | None:
    """The timeout of a request made from inside a handler: never past its caller's deadline.

    Raises:
        BrokerStateError: The request goes to the calling handler's own
            subscriber, whose only worker is the calling thread.
        RequestTimeoutError: The message being handled has expired.
    """
    running = _context.current()
    if running is None or running.message is None:
        return timeout
    message, source = running.message, running.source
    if (
        running.owner in own
        and running.max_workers == 1
        and type(source) is type(target)
        and (
            _reaches(source, target.name)
            if isinstance(source, PubSub)
            else source.name == target.name
        )
    ):
        msg = f"Cannot request {target} from inside its own handler: its only worker is the calling thread, so this process could not answer before the timeout. Call the function directly, or give that subscriber max_workers=2 or more."
        raise BrokerStateError(msg)
    if message.deadline is None:
        return timeout
    remaining = message.deadline - time.time()
    if remaining <= 0:
        msg = f"No time left to request {target}: the caller of the message being handled (correlation_id={message.correlation_id[:100]!r}) stopped waiting {-remaining:.3f} s ago."
        raise RequestTimeoutError(
            msg,
            destination=str(target),
            correlation_id=message.correlation_id,
            timeout=0.0 if timeout is None else timeout,
        )
    return remaining if timeout is None else min(timeout, remaining)


def _reaches(source: PubSub, channel: str) -> bool:
    """Whether a message published to *channel* reaches a subscriber of *source*."""
    template = subscription(source)
    assert template is not None  # a channel always has one
    if template.names:
        return bool(template.values(channel))
    if source.pattern:
        return matches(template.subscription, channel)
    return channel == template.subscription


# The longest idempotency key: it is part of a Redis key name.
MAX_IDEMPOTENCY_KEY = 1_000


def with_idempotency_key(
    headers: Mapping[str, str] | None, key: str | None
) -> Mapping[str, str] | None:
    """*headers* with the idempotency *key*, if any (see ``_server.idempotency``).

    Raises:
        SetupError: *key* is empty, too long, or not a str.
    """
    if key is None:
        return headers
    if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        msg = f"idempotency_key must be a non-empty str of at most {MAX_IDEMPOTENCY_KEY} characters, not {key!r:.60}."
        raise SetupError(msg)
    return {**headers, IDEMPOTENCY_KEY: key} if headers else {IDEMPOTENCY_KEY: key}
