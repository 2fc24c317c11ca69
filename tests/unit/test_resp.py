"""Our RESP packer writes what redis-py's does, keeps large values out of the copy, and refuses what is not a number."""

from __future__ import annotations

import pytest
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from redis_rpc._io.resp import LARGE, pack

COMMANDS = [
    [(b"PING",)],
    [(b"PUBLISH", "redis_rpc.reply.x", b"frame"), (b"BLPOP", "list", 1.5)],
    [(b"SET", b"key", b"\x00\r\n" * 10, b"PX", 30000), (b"XACK", "s", "g", b"1-0")],
    [(b"RPUSH", "big", b"y" * (LARGE + 1)), (b"LLEN", "big")],
    [(b"XADD", "s", b"MAXLEN", b"~", 10, b"*", b"__data__", "é")],
]


def _redis_py(commands):
    packer = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
    return b"".join(b"".join(packer.pack(*command)) for command in commands)


@pytest.mark.parametrize("commands", COMMANDS, ids=range(len(COMMANDS)))
def test_the_same_bytes_as_redis_py(commands):
    """Every command comes out byte for byte as redis-py packs it."""
    assert b"".join(pack(commands)) == _redis_py(commands)


def test_a_large_value_is_a_buffer_of_its_own():
    """A value of LARGE bytes or more is written from its own object, not copied."""
    value = b"y" * LARGE
    buffers = pack([(b"RPUSH", "k", value), (b"PING",)])
    assert any(buffer is value for buffer in buffers)
    assert b"".join(buffers).endswith(b"\r\n*1\r\n$4\r\nPING\r\n")


def test_anything_else_is_refused():
    """An argument that is not bytes, str or a number raises TypeError."""
    with pytest.raises(TypeError):
        pack([(b"SET", "k", object())])  # type: ignore[list-item]
