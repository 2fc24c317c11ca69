"""CPU cost of redis_rpc's frames, ids and headers on the request path, without Redis.

Times each step that a request costs outside Redis, on the caller (what
``RedisBroker.request()`` does around its two Redis commands: the
destination, the correlation id, the deadline header, the reply channel and
nonce from the reply listener, the frame, its signature, the reply's check
and parsing) and on the server (``Processor.run()`` on a request, from
parsing it to the commands that answer it), one by one and then together as
one request. With ``--signing-key`` the same paths sign and verify.

Also times redis-py's parsing of the reply as the listener receives it
(a Pub/Sub ``pmessage`` over a socket pair), with redis-py's Python parser
and, when installed, hiredis'; and what the counters of ``broker.stats()``,
which are always on, add to a request and to a handled message.

Run from the repository root::

    .venv/bin/python -m benchmarks.frames [--quick | --smoke]

Figures are microseconds of this process's CPU time per operation, the
best of many repeats (the least disturbed by other processes on a busy
machine).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.utils

from redis_rpc._client.listener import ReplyListener
from redis_rpc._hooks import DestinationCounter, SubscriberCounter
from redis_rpc._io.commands import send_command
from redis_rpc._server.handler import Handler
from redis_rpc._server.model import Delivery, Policy, Subscriber
from redis_rpc._server.process import Processor
from redis_rpc._wire import signing
from redis_rpc._wire.convert import make_converter
from redis_rpc._wire.message import (
    ACCEPT_ERRORS,
    DEADLINE,
    DESTINATION,
    NONCE,
    RedisMessage,
    build_frame,
    check_size,
    frame_parts,
    new_correlation_id,
)
from redis_rpc._wire.schemas import ListSub, PubSub, destination

if TYPE_CHECKING:
    from collections.abc import Callable

CHANNEL = "bench.echo"
BODY = b"hello, frames"
MAX_SIZE = 8 * 1024 * 1024
KEY = b"k" * 32
# Where the requests go: the processor below serves this list.
WHERE = f"list:{CHANNEL}"


def per_call(func: Callable[[], object], *, budget: float, repeats: int) -> float:
    """Microseconds of CPU per call of *func*: the best of *repeats* timed loops of about *budget* seconds each.

    CPU time, not wall-clock time: on a busy machine, time spent waiting for
    a core is not the code's cost.
    """
    loops, elapsed = 1, 0.0
    while True:  # calibrate: as many calls as fit in the budget
        start = time.process_time()
        for _ in range(loops):
            func()
        elapsed = time.process_time() - start
        if elapsed >= budget / 4:
            break
        loops *= 4
    loops = max(1, int(loops * budget / elapsed))
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(loops):
            func()
        best = min(best, (time.process_time() - start) / loops)
    return best * 1e6


def _listener(key: bytes | None) -> ReplyListener:
    # Never started: these paths never reach Redis.
    listener = ReplyListener(None, cluster=False, poll_interval=1.0, signing_key=key)
    listener._set_accepting(True)  # as when its subscription is up
    return listener


def caller_steps(key: bytes | None) -> dict[str, Callable[[], object]]:
    """Each step of ``request()`` on the caller, outside Redis."""
    converter = make_converter()
    listener = _listener(key)
    target = PubSub(CHANNEL)
    pending = listener.register("bench")
    reply_to, nonce = pending.channel, pending.nonce
    listener.discard(reply_to)
    headers = {ACCEPT_ERRORS: "1", DEADLINE: f"{time.time() + 30:.3f}", NONCE: nonce}
    if key is not None:
        headers[DESTINATION] = WHERE
    request = signing.sign_frame(
        build_frame(
            BODY,
            correlation_id=new_correlation_id(),
            reply_to=reply_to,
            headers=headers,
            converter=converter,
        ),
        key,
    )
    reply = _server_commands(key, request)[0].data

    def register() -> None:
        listener.discard(listener.register("bench").channel)

    def frame() -> bytes:
        return signing.signed_frame(
            *frame_parts(
                BODY,
                correlation_id="c",
                reply_to=reply_to,
                headers=headers,
                converter=converter,
            ),
            key,
        )

    return {
        "destination(channel=...)": lambda: destination(CHANNEL, None, None),
        "correlation id": new_correlation_id,
        "deadline header": lambda: f"{time.time() + 30:.3f}",
        "register + discard (channel, nonce)": register,
        "frame: build and sign": frame,
        "check_size + send_command": lambda: (
            check_size(request, MAX_SIZE, "The request"),
            send_command(target, request),
        ),
        "check_reply": lambda: signing.check_reply(reply, key, nonce, WHERE),
        "from_payload (reply)": lambda: RedisMessage.from_payload(reply, converter),
        "error_details": lambda: RedisMessage.from_payload(
            reply, converter
        ).error_details(),
    }


def caller_request(key: bytes | None) -> Callable[[], object]:
    """The caller's whole path of one request outside Redis, step for step as ``request()``."""
    converter = make_converter()
    listener = _listener(key)
    reply = _server_commands(key, _request_payload(key, listener))[0].data

    def one() -> object:
        target = destination(CHANNEL, None, None)
        correlation_id = new_correlation_id()
        ours = {ACCEPT_ERRORS: "1", DEADLINE: f"{time.time() + 30.0:.3f}"}
        pending = listener.register(correlation_id, destination=WHERE)
        reply_to, ours[NONCE] = pending.channel, pending.nonce
        if key is not None:
            ours[DESTINATION] = WHERE
        frame = signing.signed_frame(
            *frame_parts(
                BODY,
                correlation_id=correlation_id,
                reply_to=reply_to,
                headers=ours,
                converter=converter,
            ),
            key,
        )
        check_size(frame, MAX_SIZE, "The request")
        send_command(target, frame)
        listener.discard(reply_to)
        # The listener checks the reply against the nonce; request() parses it.
        signing.check_reply(reply, key, ours[NONCE], WHERE)
        check_size(reply, MAX_SIZE, "The reply")
        return RedisMessage.from_payload(reply, converter).error_details()

    return one


def _request_payload(key: bytes | None, listener: ReplyListener) -> bytes:
    pending = listener.register("bench")
    reply_to, nonce = pending.channel, pending.nonce
    listener.discard(reply_to)
    return signing.sign_frame(
        build_frame(
            BODY,
            correlation_id=new_correlation_id(),
            reply_to=reply_to,
            headers={
                ACCEPT_ERRORS: "1",
                DEADLINE: f"{time.time() + 3600:.3f}",
                NONCE: nonce,
                **({} if key is None else {DESTINATION: WHERE}),
            },
        ),
        key,
    )


def _processor(key: bytes | None) -> Processor:
    def echo(body: bytes) -> bytes:
        return body

    handler = Handler(echo, logging.getLogger("bench"), make_converter())
    # Any transport's processor works alike; a list's is the plainest.
    subscriber = Subscriber(ListSub(CHANNEL), handler, no_reply=False, max_workers=1)
    return Processor(
        subscriber,
        Policy(max_message_size=MAX_SIZE, signing_key=key),
        name=f"redis_rpc:list:{CHANNEL}",
    )


def _server_commands(key: bytes | None, payload: bytes) -> list[Any]:
    return _processor(key).run(Delivery(payload)).commands


def server_steps(key: bytes | None) -> dict[str, Callable[[], object]]:
    """Each step of ``Processor.run()`` on a request, and the whole of it."""
    processor = _processor(key)
    payload = _request_payload(key, _listener(key))
    handler = processor.subscriber.handler
    message = RedisMessage.from_payload(payload, handler.converter)
    delivery = Delivery(payload)
    steps: dict[str, Callable[[], object]] = {
        "from_payload (request)": lambda: RedisMessage.from_payload(
            payload, handler.converter, max_size=MAX_SIZE
        ),
        "handler.arguments": lambda: handler.arguments(message),
        "outgoing (reply frame, command)": lambda: processor._replies.outgoing(
            message, BODY
        ),
    }
    if key is not None:
        steps["check_request"] = lambda: signing.check_request(payload, key, WHERE)
    steps["run (all of it)"] = lambda: processor.run(delivery)
    return steps


def parser_steps() -> dict[str, Callable[[], object]]:
    """redis-py reading one reply message off a socket, with each parser available."""
    listener = _listener(None)
    payload = _server_commands(None, _request_payload(None, listener))[0].data
    channel = f"{listener.prefix}{'0' * 32}".encode()
    pattern = f"{listener.prefix}*".encode()
    parts = [b"pmessage", pattern, channel, payload]
    wire = b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    steps: dict[str, Callable[[], object]] = {}
    parsers: list[tuple[str, type]] = [("python", redis.connection._RESP2Parser)]
    if redis.utils.HIREDIS_AVAILABLE:
        parsers.append(("hiredis", redis.connection._HiredisParser))
    for name, parser_class in parsers:
        steps[f"read one pmessage ({name} parser)"] = _socket_reader(parser_class, wire)
    return steps


def _socket_reader(parser_class: type, wire: bytes) -> Callable[[], object]:
    ours, theirs = socket.socketpair()
    connection = redis.Connection(parser_class=parser_class)
    connection._sock = ours
    connection._parser.on_connect(connection)
    batch = 64

    def read() -> object:
        # A batch at a time, so that the socket never fills; the write is timed too.
        theirs.sendall(wire * batch)
        for _ in range(batch):
            connection.read_response()
        return None

    def per_message() -> object:
        return read()

    per_message.batch = batch  # type: ignore[attr-defined]
    return per_message


def counter_steps() -> dict[str, Callable[[], object]]:
    """What ``broker.stats()`` costs: its counters are updated on every request and message."""
    subscriber, destination_ = SubscriberCounter(), DestinationCounter()

    def handled() -> None:
        subscriber.started()
        subscriber.finished("handled", dead=False, seconds=0.0001)

    def requested() -> None:
        destination_.requested("ok", 0.0003)

    return {
        "a handled message (started + finished)": handled,
        "a request (requested)": requested,
    }


def report(title: str, steps: dict[str, Callable[[], object]], args: Any) -> None:
    print(f"\n{title}")
    for name, step in steps.items():
        cost = per_call(step, budget=args.budget, repeats=args.repeats)
        cost /= getattr(step, "batch", 1)
        print(f"  {name:<42} {cost:8.2f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loops")
    parser.add_argument(
        "--smoke", action="store_true", help="one short loop each, for the test suite"
    )
    args = parser.parse_args(argv)
    args.budget, args.repeats = (
        (0.0002, 1) if args.smoke else (0.005, 9) if args.quick else (0.01, 31)
    )
    print(
        f"Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"hiredis {'on' if redis.utils.HIREDIS_AVAILABLE else 'off'}, pid {os.getpid()}"
    )
    for key, label in ((None, "without a signing key"), (KEY, "with a signing key")):
        report(f"Caller, per step ({label})", caller_steps(key), args)
        report(
            f"Caller, per request ({label})",
            {"request() outside Redis": caller_request(key)},
            args,
        )
        report(f"Server, per request ({label})", server_steps(key), args)
    report("redis-py reply parsing", parser_steps(), args)
    report("Counters of broker.stats(), always on", counter_steps(), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
