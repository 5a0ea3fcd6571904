"""Finding a Redis: the configured one, the local default, or a private one we start.

Order: ``REDIS_URL`` when set; else 127.0.0.1:6379 when it answers; else a private
``redis-server`` from PATH on a free loopback port, stopped when the caller is done (the
embedded default). Tests that stop or restart Redis always start their own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379

INSTALL_HINT = (
    "redis-server (>= 6.2) was not found on PATH: install it (Debian/Ubuntu: "
    "'sudo apt-get install redis-server'; macOS: 'brew install redis') or set REDIS_URL "
    "to a running Redis."
)


class RedisServerNotFound(RuntimeError):
    """No Redis configured or answering, and no redis-server binary to start one."""


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ping(host: str, port: int, timeout: float = 0.25) -> bool:
    """True when a Redis answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A redis-server process we started; stop it with ``stop()``."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    host: str = DEFAULT_HOST
    args: list[str] = field(default_factory=list)
    _own_workdir: bool = False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove a workdir we created."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; the workdir stays."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, timeout: float = 10.0) -> None:
        """Start the server again on the same port and data folder (after ``stop`` or ``kill``)."""
        if self.process.poll() is None:
            raise RuntimeError("redis-server is still running; stop or kill it first")
        self.process = _spawn(self.args, self.workdir)
        _wait_ready(self.host, self.port, self.process, timeout)


def _spawn(args: Sequence[str], workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(args),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def _wait_ready(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with code {process.returncode}")
        if ping(host, port):
            return
        time.sleep(0.02)
    process.kill()
    raise TimeoutError(f"redis-server on port {port} did not answer within {timeout} s")


def start_redis_server(
    *,
    port: int | None = None,
    appendonly: bool = False,
    workdir: Path | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 10.0,
) -> RedisServer:
    """Start a private redis-server on a loopback port and wait until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerNotFound(INSTALL_HINT)
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="quantum-redis-")) if workdir is None else workdir
    folder.mkdir(parents=True, exist_ok=True)
    chosen = port or free_port()
    args = [
        binary,
        "--bind",
        DEFAULT_HOST,
        "--port",
        str(chosen),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "always" if appendonly else "everysec",
        "--dir",
        str(folder),
        "--protected-mode",
        "yes",
        *extra_args,
    ]
    process = _spawn(args, folder)
    _wait_ready(DEFAULT_HOST, chosen, process, timeout)
    return RedisServer(port=chosen, process=process, workdir=folder, args=args, _own_workdir=own)


@contextlib.contextmanager
def redis_url(
    env: Mapping[str, str] | None = None, *, default_port: int = DEFAULT_PORT
) -> Iterator[str]:
    """Yield a Redis URL by the order in the module docstring; stops what it started."""
    env = os.environ if env is None else env
    configured = env.get("REDIS_URL")
    if configured:
        yield configured
        return
    if ping(DEFAULT_HOST, default_port):
        yield f"redis://{DEFAULT_HOST}:{default_port}/0"
        return
    server = start_redis_server()
    try:
        yield server.url
    finally:
        server.stop()
