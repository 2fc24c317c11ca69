"""Wire compatibility with the real FastStream ``RedisBroker``, in both directions.

Each test runs one side with ``redis_rpc`` and the other with FastStream 0.7,
over a channel, a list and a stream. A FastStream service runs on its own
event loop in a helper thread; a FastStream client runs in the test thread
with ``asyncio.run()``, while our server runs in our own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import faststream
import faststream.redis
import pytest

from redis_rpc import RedisBroker, RedisMessage, RedisResponse, Response
from tests.conftest import LONG_TIMEOUT

T = TypeVar("T")
MakeBroker = Callable[..., RedisBroker]
MakeService = Callable[[], "FastStreamService"]

# Bounds the whole of one FastStream client session (connect, send, wait for
# the reply, disconnect); the request inside it gets LONG_TIMEOUT.
CLIENT_SESSION_TIMEOUT = 2 * LONG_TIMEOUT
# A safety net for a helper thread whose test never told it to stop; above
# pytest's per-test timeout (30 s), so it never cuts a test short.
SERVICE_LIFETIME = 60.0

TRANSPORTS = ["channel", "list", "stream"]
BODIES = [
    pytest.param("hello, wörld", id="str"),
    pytest.param(b"\x00\xffraw bytes", id="bytes"),
    pytest.param({"n": 1, "items": ["a", "b"], "ok": True}, id="dict"),
]
# Header values stay ASCII: FastStream's frame writer miscounts non-ASCII ones.
USER_HEADERS = {"x-user": "alice"}


def target(transport: str, name: str) -> dict[str, Any]:
    """The keyword that sends to, or subscribes us to, *name* over *transport*."""
    return {transport: name}


def faststream_source(transport: str, name: str) -> dict[str, Any]:
    """The keyword for a FastStream subscriber on *name*; streams use a consumer group."""
    if transport == "stream":
        # The group is created by FastStream's start(), before we send anything.
        return {"stream": faststream.redis.StreamSub(name, group="fs", consumer="fs-1")}
    return target(transport, name)


def run_async(main: Awaitable[T]) -> T:
    """Run a FastStream client coroutine to completion on a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(main, CLIENT_SESSION_TIMEOUT))


class FastStreamService:
    """A FastStream ``RedisBroker`` served on its own event loop in a helper thread.

    Declare subscribers on ``broker`` first, then ``start()``; ``stop()``
    stops the broker, joins the thread and re-raises whatever the loop raised.
    FastStream's ``start()`` writes ``SUBSCRIBE`` without awaiting Redis's
    confirmation, but the command is on the server's socket before ``start()``
    returns, so Redis handles it before anything we send afterwards.
    """

    def __init__(self, redis_url: str) -> None:
        self.broker = faststream.redis.RedisBroker(redis_url)
        self._ready = threading.Event()  # set once started, or once the loop failed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="faststream-service", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(LONG_TIMEOUT), "FastStream did not start in time"
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._thread.ident is None:
            return  # never started
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            # The loop is closed already if the service failed on its own.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(LONG_TIMEOUT)
        assert not self._thread.is_alive(), "FastStream service thread did not end"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by stop()
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.broker.start()
            self._ready.set()
            await asyncio.wait_for(self._stopping.wait(), SERVICE_LIFETIME)
        finally:
            await asyncio.wait_for(self.broker.stop(), LONG_TIMEOUT)


@pytest.fixture
def faststream_service(redis_url: str) -> Iterator[Callable[[], FastStreamService]]:
    """Build FastStream services on the private server, stopped after the test."""
    services: list[FastStreamService] = []

    def make() -> FastStreamService:
        service = FastStreamService(redis_url)
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()


class TestOurClientFastStreamServer:
    """``redis_rpc.RedisBroker`` calling and publishing to FastStream subscribers."""

    @pytest.mark.parametrize("body", BODIES)
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_body_round_trips(
        self,
        make_broker: MakeBroker,
        faststream_service: MakeService,
        unique_name: str,
        transport: str,
        body: Any,
    ):
        """A body sent by request() comes back unchanged from a FastStream echo handler, with our correlation id."""
        service = faststream_service()

        @service.broker.subscriber(**faststream_source(transport, unique_name))
        async def echo(value: Any) -> Any:
            return value

        service.start()
        reply = make_broker().request(
            body,
            **target(transport, unique_name),
            correlation_id="our-correlation-id",
            timeout=LONG_TIMEOUT,
        )
        assert reply.decode() == body
        assert reply.correlation_id == "our-correlation-id"

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_user_headers_reach_handler(
        self,
        make_broker: MakeBroker,
        faststream_service: MakeService,
        unique_name: str,
        transport: str,
    ):
        """User headers sent by request() are visible to a FastStream handler."""
        service = faststream_service()

        @service.broker.subscriber(**faststream_source(transport, unique_name))
        async def whoami(
            value: str, message: faststream.redis.RedisMessage
        ) -> dict[str, Any]:
            return {"body": value, "user": message.headers.get("x-user")}

        service.start()
        reply = make_broker().request(
            "hi",
            **target(transport, unique_name),
            headers=USER_HEADERS,
            timeout=LONG_TIMEOUT,
        )
        assert reply.decode() == {"body": "hi", "user": "alice"}

    @pytest.mark.parametrize(
        "response_class", [faststream.Response, faststream.redis.RedisResponse]
    )
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_faststream_response_sets_reply_headers_and_correlation_id(
        self,
        make_broker: MakeBroker,
        faststream_service: MakeService,
        unique_name: str,
        transport: str,
        response_class: type[faststream.Response],
    ):
        """A FastStream Response's body, headers and correlation id arrive as the reply's."""
        service = faststream_service()

        @service.broker.subscriber(**faststream_source(transport, unique_name))
        async def answer(value: str) -> faststream.Response:
            return response_class(
                body="pong",
                headers={"x-token": "secret-token"},
                correlation_id="some-correlation-id",
            )

        service.start()
        reply = make_broker().request(
            "ping",
            **target(transport, unique_name),
            correlation_id="our-correlation-id",
            timeout=LONG_TIMEOUT,
        )
        assert reply.body == b"pong"
        assert reply.decode() == "pong"
        assert reply.headers == {"x-token": "secret-token"}
        assert reply.correlation_id == "some-correlation-id"

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_published_dict_decodes_as_dict(
        self,
        make_broker: MakeBroker,
        faststream_service: MakeService,
        unique_name: str,
        transport: str,
    ):
        """A dict sent by publish() reaches a FastStream subscriber as a dict, with its headers and correlation id."""
        service = faststream_service()
        received: Future[tuple[Any, str | None, str]] = Future()

        @service.broker.subscriber(**faststream_source(transport, unique_name))
        async def collect(value: Any, message: faststream.redis.RedisMessage) -> None:
            received.set_result(
                (value, message.headers.get("x-user"), message.correlation_id)
            )

        service.start()
        make_broker().publish(
            {"n": 1, "items": ["a", "b"]},
            **target(transport, unique_name),
            headers=USER_HEADERS,
            correlation_id="our-correlation-id",
        )
        value, user, correlation_id = received.result(LONG_TIMEOUT)
        assert isinstance(value, dict)
        assert value == {"n": 1, "items": ["a", "b"]}
        assert user == "alice"
        assert correlation_id == "our-correlation-id"


class TestFastStreamClientOurServer:
    """A FastStream ``RedisBroker`` calling and publishing to our subscribers."""

    @pytest.mark.parametrize("body", BODIES)
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_body_round_trips(
        self,
        make_broker: MakeBroker,
        redis_url: str,
        unique_name: str,
        transport: str,
        body: Any,
    ):
        """A body sent by FastStream's request() comes back unchanged from our echo handler, with its correlation id."""
        broker = make_broker()

        @broker.subscriber(**target(transport, unique_name))
        def echo(value: Any) -> Any:
            return value

        broker.start()

        async def call() -> tuple[Any, str]:
            async with faststream.redis.RedisBroker(redis_url) as client:
                response = await client.request(
                    body,
                    **target(transport, unique_name),
                    correlation_id="fs-correlation-id",
                    timeout=LONG_TIMEOUT,
                )
                return await response.decode(), response.correlation_id

        assert run_async(call()) == (body, "fs-correlation-id")

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_user_headers_reach_handler(
        self,
        make_broker: MakeBroker,
        redis_url: str,
        unique_name: str,
        transport: str,
    ):
        """User headers sent by FastStream's request() are visible to our handler."""
        broker = make_broker()

        @broker.subscriber(**target(transport, unique_name))
        def whoami(value: str, message: RedisMessage) -> dict[str, Any]:
            return {"body": value, "user": message.headers.get("x-user")}

        broker.start()

        async def call() -> Any:
            async with faststream.redis.RedisBroker(redis_url) as client:
                response = await client.request(
                    "hi",
                    **target(transport, unique_name),
                    headers=USER_HEADERS,
                    timeout=LONG_TIMEOUT,
                )
                return await response.decode()

        assert run_async(call()) == {"body": "hi", "user": "alice"}

    @pytest.mark.parametrize("response_class", [Response, RedisResponse])
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_our_response_sets_reply_headers_and_correlation_id(
        self,
        make_broker: MakeBroker,
        redis_url: str,
        unique_name: str,
        transport: str,
        response_class: type[Response],
    ):
        """Our Response's body, headers and correlation id arrive in FastStream's reply message."""
        broker = make_broker()

        @broker.subscriber(**target(transport, unique_name))
        def answer(value: str) -> Response:
            return response_class(
                "pong",
                headers={"x-token": "secret-token"},
                correlation_id="some-correlation-id",
            )

        broker.start()

        async def call() -> tuple[bytes, Any, dict[str, Any], str]:
            async with faststream.redis.RedisBroker(redis_url) as client:
                response = await client.request(
                    "ping",
                    **target(transport, unique_name),
                    correlation_id="fs-correlation-id",
                    timeout=LONG_TIMEOUT,
                )
                return (
                    response.body,
                    await response.decode(),
                    dict(response.headers),
                    response.correlation_id,
                )

        body, decoded, headers, correlation_id = run_async(call())
        assert body == b"pong"
        assert decoded == "pong"
        assert headers.get("x-token") == "secret-token"
        assert correlation_id == "some-correlation-id"

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_publish_with_reply_to_sends_result_to_channel(
        self,
        make_broker: MakeBroker,
        redis_url: str,
        unique_name: str,
        transport: str,
    ):
        """FastStream's publish(reply_to=...) makes our handler publish its result to that channel."""
        reply_channel = f"{unique_name}-reply"
        broker = make_broker()

        @broker.subscriber(**target(transport, unique_name))
        def double(value: int) -> dict[str, int]:
            return {"doubled": value * 2}

        broker.start()

        async def publish_and_wait() -> tuple[Any, str]:
            client = faststream.redis.RedisBroker(redis_url)
            replies: asyncio.Future[tuple[Any, str]] = (
                asyncio.get_running_loop().create_future()
            )

            @client.subscriber(channel=reply_channel)
            async def on_reply(
                value: Any, message: faststream.redis.RedisMessage
            ) -> None:
                replies.set_result((value, message.correlation_id))

            async with client:
                await client.start()
                await client.publish(
                    21,
                    **target(transport, unique_name),
                    reply_to=reply_channel,
                    correlation_id="fs-correlation-id",
                )
                return await replies

        assert run_async(publish_and_wait()) == ({"doubled": 42}, "fs-correlation-id")
