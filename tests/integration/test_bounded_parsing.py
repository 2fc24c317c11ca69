"""Oversized payloads are refused before they are parsed, whatever their format."""

from __future__ import annotations

import logging
import tracemalloc

import pytest

from redis_rpc._server.process import logger as consumer_logger
from tests.conftest import LONG_TIMEOUT
from tests.helpers import wait_for

# Small, so that a few megabytes of envelope are far over it.
LIMIT = 64 * 1024
# About 4 MB of envelope; json.loads() would build some 40 MB of objects from it.
HEADERS = 400_000


def _envelope_with_many_headers(count: int) -> bytes:
    headers = ",".join(f'"{n}":0' for n in range(count))
    return f'{{"data":"x","headers":{{"reply_to":"r",{headers}}}}}'.encode()


def _rejections(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == consumer_logger.name and "rejected" in r.getMessage()
    ]


@pytest.mark.timeout(60)
def test_oversized_envelope_is_refused_unparsed(make_broker, unique_name, raw, caplog):
    """An envelope with very many headers, over max_message_size, is refused with one
    log line and never parsed, and the consumer answers the next request."""
    payload = _envelope_with_many_headers(HEADERS)
    broker = make_broker(max_message_size=LIMIT)
    handled = []

    @broker.subscriber(list=unique_name)
    def echo(body: object) -> object:
        handled.append(body)
        return body

    caplog.set_level(logging.WARNING, logger=consumer_logger.name)
    raw.rpush(unique_name, payload)  # before tracing: sending it costs a copy too
    # Traced from here on, the consumer thread included: its reading, and any parsing.
    tracemalloc.start()
    try:
        with broker:
            assert wait_for(lambda: _rejections(caplog), LONG_TIMEOUT)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            reply = broker.request(
                {"after": "envelope"}, list=unique_name, timeout=LONG_TIMEOUT
            )
    finally:
        tracemalloc.stop()  # a no-op when stopped already
    # Reading the payload costs a copy or two of it; parsing it costs about ten more.
    assert peak < 6 * len(payload), (
        f"peak {peak} bytes for a {len(payload)}-byte payload"
    )
    assert reply.decode() == {"after": "envelope"}
    assert handled == [{"after": "envelope"}]
    [line] = _rejections(caplog)
    assert f"{len(payload)} bytes" in line
    assert "max_message_size" in line
