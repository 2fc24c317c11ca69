"""Blocking request/reply over Redis, wire-compatible with FastStream.

Call FastStream services from threaded code, and serve FastStream callers,
over Redis channels, lists and streams.
"""

from __future__ import annotations

import logging
from logging import Logger

from redis_rpc import _logs
from redis_rpc._broker import RedisBroker, RedisClusterBroker
from redis_rpc._cli.app import App
from redis_rpc._client.compose import ReplyStream
from redis_rpc._hooks import DestinationStats, Event, Health, Stats, SubscriberStats
from redis_rpc._wire.convert import make_converter
from redis_rpc._wire.message import RedisMessage, RedisResponse, Response
from redis_rpc._wire.path import Path
from redis_rpc._wire.schemas import ListSub, PubSub, StreamSub
from redis_rpc.errors import RemoteError

__version__ = "0.1.0"

# Our warnings reach stderr only where nothing else would show them: see _logs.
_logs.install(logging.getLogger(__name__))

__all__ = [
    "App",
    "DestinationStats",
    "Event",
    "Health",
    "ListSub",
    "Logger",
    "Path",
    "PubSub",
    "RedisBroker",
    "RedisClusterBroker",
    "RedisMessage",
    "RedisResponse",
    "RemoteError",
    "ReplyStream",
    "Response",
    "Stats",
    "StreamSub",
    "SubscriberStats",
    "__version__",
    "make_converter",
]
