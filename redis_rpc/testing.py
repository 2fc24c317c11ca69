"""Test helpers: ``RedisServer`` runs a private ``redis-server`` on a free loopback port."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["RedisServer"]


class RedisServer:
    """A throwaway ``redis-server`` process on 127.0.0.1, keeping nothing on disk.

    ``start()`` picks a free port (or reuses the last one, so that a test
    can kill the server and bring it back where clients expect it) and
    returns once the server answers ``PING``. Not thread-safe: one owner.

    Args:
        executable: The ``redis-server`` binary; found on ``PATH`` by default.
        startup_timeout: Seconds ``start()`` waits for the server to answer.
    """

    def __init__(
        self, executable: str | None = None, *, startup_timeout: float = 10.0
    ) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            msg = "redis-server is not on PATH; install it (Debian: apt-get install redis-server)."
            raise FileNotFoundError(msg)
        self.executable = found
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers.

        Raises:
            RuntimeError: The server exited or did not answer in time.
        """
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="redis_rpc-")
        if not self.port:
            self.port = _free_port()
        args = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
        ]
        self._process = subprocess.Popen(  # noqa: S603 - a fixed argv, no shell
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                msg = f"redis-server exited with code {self._process.returncode} on port {self.port}."
                raise RuntimeError(msg)
            if _answers_ping(self.port):
                return
            time.sleep(0.02)  # polling a child process we cannot wait on otherwise
        self.stop()
        msg = f"redis-server did not answer on port {self.port} within {self.startup_timeout} s."
        raise RuntimeError(msg)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP the server: its connections stay open but nothing is answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the server, killing it if it does not exit promptly."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a paused server cannot exit
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
