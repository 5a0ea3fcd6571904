"""The JetStream harness: a private ``nats-server -js`` on a free loopback port, with its own
store folder, for the conformance suite (``tests.conformance.harness.Harness``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from runtime.core.engine import Engine
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.core.redis_server import free_port
from tests.conformance.harness import KEEP_ALL

HOST = "127.0.0.1"
INSTALL_HINT = (
    "nats-server (>= 2.9, with JetStream) was not found on PATH: install it (Debian/Ubuntu: "
    "'sudo apt-get install nats-server'; macOS: 'brew install nats-server')."
)


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


class JetStreamHarness:
    """One private nats-server with JetStream; its store survives ``kill`` and ``restart``."""

    kind = "jetstream"

    def __init__(self) -> None:
        self.port = free_port(HOST)
        self.store = Path(tempfile.mkdtemp(prefix="quantum-nats-"))
        self.args = [
            nats_server_binary(),
            "-js",
            "-a",
            HOST,
            "-p",
            str(self.port),
            "-sd",
            str(self.store),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._start()

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def open(
        self, namespace: str, partitioning: Partitioning | None = None, *, keep: int = KEEP_ALL
    ) -> Engine:
        from runtime.adapters.nats.engine import JetStreamEngine
        from runtime.adapters.nats.retention import RetentionPolicy

        retention = None if keep == KEEP_ALL else RetentionPolicy(keep, keep, overshoot=1)
        return JetStreamEngine.from_url(
            self.url, Keyspace(namespace), partitioning=partitioning, retention=retention
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.kill()
        self._start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.store, ignore_errors=True)

    def _start(self) -> None:
        log = (self.store / "server.log").open("ab")
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited at start ({self.process.returncode}); see "
                    f"{self.store / 'server.log'}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.25) as sock:
                    sock.settimeout(0.5)
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nats-server did not answer on {self.url} within 15 s")
