"""Cancel notices: a caller tells the servers that it gave up on a request.

A caller that cancels a request (``Future.cancel()`` on ``broker.submit()``,
or closing the iterator of ``broker.stream()``) publishes a notice on
``CANCEL_CHANNEL``; every broker's reply listener hears it, and a server
that runs the request's handler sets the message's ``cancelled``, or skips
the request if it has not started it yet. The notice names the request by
its reply channel, which only its caller and its servers know. Between
peers that share a ``signing_key`` it is signed, and an unsigned or forged
one is ignored: otherwise anyone who may publish could stop handlers.
"""

from __future__ import annotations

import hmac

CANCEL_CHANNEL = "redis_rpc.cancel"
# Domain-separates a notice's MAC from those of frames.
_CONTEXT = b"redis_rpc.cancel\x00"


def _mac(key: bytes, reply_to: bytes) -> str:
    return hmac.digest(key, _CONTEXT + reply_to, "sha256").hex()


def notice(reply_to: str, key: bytes | None) -> bytes:
    """The notice that cancels the request answered on *reply_to*, signed with *key* if any."""
    raw = reply_to.encode()
    return raw if key is None else raw + b" " + _mac(key, raw).encode()


def read_notice(payload: bytes, key: bytes | None) -> str | None:
    """The reply channel a notice cancels, or None when it does not verify with *key*."""
    raw, _, mac = payload.partition(b" ")
    if key is not None and not hmac.compare_digest(mac, _mac(key, raw).encode()):
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None
