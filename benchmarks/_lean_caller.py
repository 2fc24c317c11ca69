"""A minimal caller: the yardstick for what ``RedisBroker.request()`` costs beyond its frames.

It sends redis_rpc's own request frames to a list and waits for the reply,
as ``request()`` does, with the least machinery that can: one writer thread
that drains a ``queue.SimpleQueue`` and writes everything in it at once, one
listener thread that reads the pattern subscription with hiredis straight
from the socket, and a lock per waiting caller. No deadlines on writes, no
push-back, no reconnection, no error replies, no signing: it is for
measuring, never for use. ``benchmarks.engine_quick --caller lean`` runs it
against the same server as the real broker.
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import threading
import time
from typing import Any

import redis

from redis_rpc._wire.message import (
    ACCEPT_ERRORS,
    DEADLINE,
    NONCE,
    RedisMessage,
    frame_parts,
    new_correlation_id,
)
from redis_rpc._wire.signing import signed_frame

# How long the threads wait before looking at their stop flag.
_STOP_CHECK = 0.5


class LeanCaller:
    """Requests over lists with redis_rpc's frames, through a writer thread and a listener thread.

    Needs hiredis. ``request()`` may be called from any number of threads.
    """

    def __init__(self, url: str) -> None:
        import hiredis  # the point is hiredis' reader on the raw socket

        kwargs = redis.ConnectionPool.from_url(url).connection_kwargs
        self._address = (kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379))
        self._prefix = f"lean.reply.{os.urandom(8).hex()}."
        self._keys = itertools.count()
        # Reply channel -> (the lock its caller waits on, the box for the payload).
        self._pending: dict[bytes, tuple[threading.Lock, list[bytes]]] = {}
        self._out: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._writer_connection = redis.Connection(
            host=self._address[0], port=self._address[1], protocol=2
        )
        self._writer_connection.connect()
        self._listener_socket = socket.create_connection(self._address)
        self._listener_socket.settimeout(_STOP_CHECK)
        self._reader = hiredis.Reader()
        subscribed = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, name="lean:writer", daemon=True),
            threading.Thread(
                target=self._listen,
                args=(subscribed,),
                name="lean:listener",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()
        if not subscribed.wait(5.0):
            msg = "The lean caller could not subscribe."
            raise RuntimeError(msg)

    def request(self, body: bytes, list_name: str, timeout: float) -> RedisMessage:
        channel = f"{self._prefix}{next(self._keys)}"
        lock, box = threading.Lock(), []
        lock.acquire()
        key = channel.encode()
        self._pending[key] = (lock, box)
        try:
            frame = signed_frame(
                *frame_parts(
                    body,
                    correlation_id=new_correlation_id(),
                    reply_to=channel,
                    headers={
                        ACCEPT_ERRORS: "1",
                        DEADLINE: f"{time.time() + timeout:.3f}",
                        NONCE: "lean",
                    },
                ),
                None,
            )
            self._out.put((b"RPUSH", list_name, frame))
            if not lock.acquire(timeout=timeout):
                raise TimeoutError(channel)
            return RedisMessage.from_payload(box[0])
        finally:
            self._pending.pop(key, None)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2 * _STOP_CHECK + 1.0)
        self._writer_connection.disconnect()
        self._listener_socket.close()

    def _write(self) -> None:
        connection = self._writer_connection
        while not self._stop.is_set():
            try:
                batch = [self._out.get(timeout=_STOP_CHECK)]
            except queue.Empty:
                continue
            for _ in range(self._out.qsize()):
                batch.append(self._out.get_nowait())
            connection.send_packed_command(connection.pack_commands(batch))
            for _ in batch:
                connection.read_response()

    def _listen(self, subscribed: threading.Event) -> None:
        sock, reader, pending = self._listener_socket, self._reader, self._pending
        sock.sendall(
            b"*2\r\n$10\r\nPSUBSCRIBE\r\n"
            + b"$%d\r\n%s*\r\n" % (len(self._prefix) + 1, self._prefix.encode())
        )
        buffer = bytearray(1 << 16)
        while not self._stop.is_set():
            try:
                count = sock.recv_into(buffer)
            except TimeoutError:
                continue
            if count == 0:
                return
            reader.feed(buffer, 0, count)
            while (message := reader.gets()) is not False:
                if message[0] == b"pmessage":
                    waiter = pending.pop(message[2], None)
                    if waiter is not None:
                        waiter[1].append(message[3])
                        waiter[0].release()
                elif message[0] == b"psubscribe":
                    subscribed.set()
