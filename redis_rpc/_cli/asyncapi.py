"""``redis-rpc docs gen``: an AsyncAPI 3.0 document of an application's subscribers and publishers.

Shaped as FastStream's generator shapes a Redis application
(``faststream/specification/asyncapi/v3_0_0``), so that what reads one
reads the other: one server; per subscriber a channel with its Redis
transport in the ``redis`` binding (the channel or key, the method such
as ``subscribe``, ``psubscribe``, ``lpop`` or ``xreadgroup``, a stream's
group), a ``receive`` operation and the message its handler takes; per
``@broker.publisher`` destination a channel and a ``send`` operation with
the handler's result; message payloads as JSON Schemas in the components.

What FastStream leaves out (faststream#1586), we add: the operation of a
handler that replies has a ``reply``, sent to the channel its caller names
in the ``reply_to`` header, of one of two messages: the result, whose
payload is the return annotation's schema, or the error reply that a
redis_rpc caller gets instead, with the ``x-redis-rpc-error`` header and a
``{"type", "message", "errors", "traceback"}`` body, ``retry_after`` too
when the server shed the request (see ``_wire.message.error_frame_parts()``). A channel template such as
``logs.{level}`` declares its parameters. The broker is only read, never
started: no Redis is needed.
"""

from __future__ import annotations

import importlib
import json
import re
import urllib.parse
from typing import TYPE_CHECKING, Any

from redis_rpc._wire import path
from redis_rpc._wire.message import CORRELATION_ID, ERROR, REPLY_TO, Response
from redis_rpc._wire.schemas import ListSub, PubSub, StreamSub
from redis_rpc._wire.typeschema import COMPONENTS, Schemas

if TYPE_CHECKING:
    from redis_rpc._broker import RedisBroker
    from redis_rpc._server.model import Subscriber
    from redis_rpc._wire.schemas import Destination

ASYNCAPI_VERSION = "3.0.0"
SERVER = "development"  # FastStream's name for the one server
# As in FastStream's Redis bindings, which name no version of the official one.
BINDING_VERSION = "custom"
ERROR_MESSAGE = "RedisRpcError"
# What a JSON Pointer segment may keep in a URI fragment; the rest is %-encoded.
_POINTER_SAFE = ":@!$&'()*+,;="
_CORRELATION = {"location": f"$message.header#/{CORRELATION_ID}"}
_ERROR_HEADERS = {
    "type": "object",
    "properties": {
        ERROR: {
            "type": "string",
            "description": "The name of the exception's type, such as ValidationError.",
        },
        CORRELATION_ID: {"type": "string"},
    },
    "required": [ERROR],
}
_ERROR_PAYLOAD = {
    "title": ERROR_MESSAGE,
    "type": "object",
    "properties": {
        "type": {"type": "string", "description": "The exception's type name."},
        "message": {"type": "string", "description": "What str() of it says."},
        "errors": {
            "type": "array",
            "items": {"type": "string"},
            "description": "For a ValidationError, one line per failing field, such as 'Field required @ $.lines[0].sku'.",
        },
        "traceback": {
            "type": ["string", "null"],
            "description": "The handler's traceback, when the server sends them (send_tracebacks=True).",
        },
        "retry_after": {
            "type": "number",
            "minimum": 0,
            "description": "For an OverloadedError (the server shed the request), seconds after which to try again.",
        },
    },
    "required": ["type", "message", "errors", "traceback"],
}


def document(
    broker: RedisBroker, *, title: str, version: str = "0.1.0"
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of *broker*'s subscribers and publishers, as JSON-ready data."""
    address, subscribers = broker._declared()
    builder = _Builder()
    for subscriber in subscribers:
        builder.add(subscriber)
    messages = builder.messages
    if builder.replies:
        messages[ERROR_MESSAGE] = {
            "title": ERROR_MESSAGE,
            "summary": "The error reply: the handler raised, the body did not fit its type, or the server shed the request.",
            "description": (
                "Sent instead of the result to callers that accept error replies"
                " (redis_rpc callers, whose requests carry the header"
                " x-redis-rpc-accept-errors: 1); a FastStream caller gets no reply."
            ),
            "correlationId": dict(_CORRELATION),
            "headers": _ERROR_HEADERS,
            "payload": {"$ref": COMPONENTS + ERROR_MESSAGE},
        }
        builder.schemas.components[ERROR_MESSAGE] = _ERROR_PAYLOAD
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": version},
        "defaultContentType": "application/json",
        "servers": {
            SERVER: {"host": address, "protocol": "redis", "protocolVersion": "custom"}
        },
        "channels": builder.channels,
        "operations": builder.operations,
        "components": {"messages": messages, "schemas": builder.schemas.components},
    }


def dump(doc: dict[str, Any], *, yaml: bool = False) -> str:
    """*doc* as JSON text, or as YAML when *yaml* (PyYAML must be installed).

    Raises:
        ImportError: *yaml*, and PyYAML is missing.
    """
    if not yaml:
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    pyyaml = importlib.import_module("yaml")  # optional: only --yaml needs it
    text: str = pyyaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return text


class _Builder:
    """Collects the channels, operations and messages of one broker's subscribers."""

    def __init__(self) -> None:
        self.schemas = Schemas()
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.replies = 0  # operations with a reply: then the error message is needed

    def add(self, subscriber: Subscriber) -> None:
        handler, source = subscriber.handler, subscriber.source
        name = _camel(handler.func.__name__)
        key = self._free(f"{source.name}:{name}")
        message = self._message(
            f"{key}:SubscribeMessage", handler.body_hint, "validation", top=True
        )
        self.channels[key] = self._channel(
            source, {"SubscribeMessage": message}, subscriber=True
        )
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": _ref("channels", key),
            "messages": [_ref("channels", key, "messages", "SubscribeMessage")],
        }
        if not subscriber.no_reply:
            operation["reply"] = self._reply(key, handler.result_hint)
        self.operations[f"{key}Subscribe"] = operation
        for target in subscriber.publishers:
            self._publisher(target, handler.result_hint)

    def _reply(self, key: str, result: Any) -> dict[str, Any]:
        """The reply of the operation on channel *key*: the result, or the error reply."""
        self.replies += 1
        reply_key = self._free(f"{key}:Reply")
        self.channels[reply_key] = {
            "address": None,  # the caller's own, named in reply_to
            "description": f"The caller's reply channel, named in the request's {REPLY_TO} header.",
            "messages": {
                "Reply": self._message(f"{reply_key}:Message", result, "serialization"),
                "Error": _ref("components", "messages", ERROR_MESSAGE),
            },
        }
        return {
            "address": {
                "location": f"$message.header#/{REPLY_TO}",
                "description": "The channel the caller waits on, over Pub/Sub whatever carried the request.",
            },
            "channel": _ref("channels", reply_key),
            "messages": [
                _ref("channels", reply_key, "messages", "Reply"),
                _ref("channels", reply_key, "messages", "Error"),
            ],
        }

    def _publisher(self, target: Destination, result: Any) -> None:
        key = self._free(
            f"{target.name}:Publisher"
        )  # FastStream's key; numbered if shared
        message = self._message(f"{key}:Message", result, "serialization")
        self.channels[key] = self._channel(
            target, {"Message": message}, subscriber=False
        )
        self.operations[key] = {
            "action": "send",
            "channel": _ref("channels", key),
            "messages": [_ref("channels", key, "messages", "Message")],
        }

    def _channel(
        self, target: Destination, messages: dict[str, Any], *, subscriber: bool
    ) -> dict[str, Any]:
        channel: dict[str, Any] = {
            "address": target.name,
            "servers": [_ref("servers", SERVER)],
            "messages": messages,
            "bindings": {"redis": _binding(target, subscriber=subscriber)},
        }
        if subscriber and isinstance(target, PubSub) and not target.sharded:
            names = path.parse(target.channel).names
            if names:
                channel["parameters"] = {
                    name: {
                        "description": f"The part of the channel's name in place of {{{name}}}."
                    }
                    for name in names
                }
        return channel

    def _message(
        self, key: str, hint: Any, mode: str, *, top: bool = False
    ) -> dict[str, Any]:
        """A message component named *key* whose payload is *hint*'s; a reference to it.

        *top*: the hint is a body parameter's, where ``bytes`` takes the raw body.
        """
        message: dict[str, Any] = {"title": key, "correlationId": dict(_CORRELATION)}
        if isinstance(hint, type) and issubclass(hint, Response):
            message["payload"] = {}  # the handler sets the body itself
        elif top and hint is bytes:
            message["contentType"] = "application/octet-stream"
            message["payload"] = {"type": "string", "format": "binary"}
        else:
            if hint is str:
                message["contentType"] = "text/plain"
            message["payload"] = self.schemas.of(hint, mode=mode)
        self.messages[key] = message
        return _ref("components", "messages", key)

    def _free(self, key: str) -> str:
        """*key*, or *key* with a number, whichever no channel has yet."""
        candidate, number = key, 1
        while candidate in self.channels:
            number += 1
            candidate = f"{key}{number}"
        return candidate


def _binding(target: Destination, *, subscriber: bool) -> dict[str, Any]:
    """The ``redis`` binding of a channel, as FastStream writes it."""
    group = None
    if isinstance(target, PubSub):
        if target.sharded:
            method = "ssubscribe" if subscriber else "spublish"
        elif subscriber:
            method = "psubscribe" if target.pattern else "subscribe"
        else:
            method = "publish"
    elif isinstance(target, ListSub):
        method = ("lmove" if target.reliable else "lpop") if subscriber else "rpush"
    else:
        assert isinstance(target, StreamSub)
        method = "xreadgroup" if subscriber else "xadd"
        # Not the consumer's name: by default each process draws its own.
        group = target.group if subscriber else None
    binding: dict[str, Any] = {"channel": target.name, "method": method}
    if group is not None:
        binding["groupName"] = group
    binding["bindingVersion"] = BINDING_VERSION
    return binding


def _ref(*parts: str) -> dict[str, str]:
    """A Reference Object to ``#/parts/...``, each part escaped as JSON Pointer and URI fragment want."""
    escaped = (
        urllib.parse.quote(
            part.replace("~", "~0").replace("/", "~1"), safe=_POINTER_SAFE
        )
        for part in parts
    )
    return {"$ref": "#/" + "/".join(escaped)}


def _camel(name: str) -> str:
    """``PlaceOrder`` for ``place_order``, as FastStream names a handler's channel."""
    return (
        "".join(word[:1].upper() + word[1:] for word in re.split(r"[_\W]+", name))
        or "Handler"
    )
