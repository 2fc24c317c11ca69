"""The README's example: three handlers, three requests, on a private redis-server.

Run it with ``make example``; it starts its own redis-server on a free
loopback port, so it needs nothing else running.
"""

from __future__ import annotations

import logging

from redis_rpc import App, Logger, RedisBroker, RedisMessage
from redis_rpc.testing import RedisServer


def main(url: str) -> None:
    broker = RedisBroker(url)
    app = App(broker)

    # FastStream's Redis RPC guide: each handler answers with what it got.
    @broker.subscriber(channel="test-channel")
    def handle_channel(msg: str, logger: Logger) -> str:
        logger.info("channel handler got %r", msg)
        return msg

    @broker.subscriber(list="test-list")
    def handle_list(msg: str, logger: Logger) -> str:
        logger.info("list handler got %r", msg)
        return msg

    @broker.subscriber(stream="test-stream")
    def handle_stream(msg: str, logger: Logger) -> str:
        logger.info("stream handler got %r", msg)
        return msg

    @app.after_startup
    def t() -> None:
        msg = "Hi!"
        for kind in ("channel", "list", "stream"):
            response: RedisMessage = broker.request(
                msg, **{kind: f"test-{kind}"}, timeout=3.0
            )
            print(
                f"request over {kind:<7} -> body={response.decode()!r} "
                f"correlation_id={response.correlation_id!r}"
            )
            assert response.decode() == msg
        app.exit()

    app.run()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(threadName)s %(name)s: %(message)s"
    )
    with RedisServer() as server:
        print(f"started a private redis-server on {server.url}")
        main(server.url)
    print("broker closed, redis-server stopped")
