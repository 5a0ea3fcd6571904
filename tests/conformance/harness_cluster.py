"""A 3-master Redis Cluster of the test's own, for the conformance suite (``Harness``).

Three ``redis-server --cluster-enabled yes`` processes on free loopback ports, each in its own
temporary folder, append-only with fsync always (a restart keeps everything, the cluster
configuration included: ``nodes.conf``), joined by ``redis-cli --cluster create`` with no
replicas. ``kill`` SIGKILLs all three; ``restart`` starts them on the same ports and folders
and waits until every node says ``cluster_state:ok``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import redis

from runtime.adapters.redis.cluster.engine import RedisClusterEngine
from runtime.adapters.redis.retention import RetentionPolicy
from runtime.core.engine import Engine
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.core.redis_server import DEFAULT_HOST, RedisServer, free_port, start_redis_server
from tests.conformance.harness import KEEP_ALL

MASTERS = 3
CLUSTER_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
)


def cluster_info(port: int, timeout: float = 0.5) -> str:
    """CLUSTER INFO of the node at ``port`` ("" when it does not answer)."""
    try:
        with socket.create_connection((DEFAULT_HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n")
            data = b""
            while not data.startswith(b"$") or data.count(b"\r\n") < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n")
            if not head.startswith(b"$"):
                return ""
            size = int(head[1:])
            while len(body) < size:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
            return body[:size].decode()
    except (OSError, ValueError):
        return ""


class RedisClusterHarness:
    """Three masters, no replicas, all slots covered."""

    kind = "redis_cluster"

    def __init__(self, *, timeout: float = 30.0) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is needed to create a Redis Cluster; install redis-tools")
        self.timeout = timeout
        self.servers: list[RedisServer] = []
        try:
            for _ in range(MASTERS):
                # The cluster bus on a port of its own: the default, port + 10000, can be
                # past 65535 for a free port picked high.
                bus = ("--cluster-port", str(free_port()))
                self.servers.append(
                    start_redis_server(appendonly=True, extra_args=(*CLUSTER_ARGS, *bus))
                )
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"{DEFAULT_HOST}:{s.port}" for s in self.servers),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{DEFAULT_HOST}:{p}" for p in self.ports)

    def open(
        self, namespace: str, partitioning: Partitioning | None = None, *, keep: int = KEEP_ALL
    ) -> Engine:
        return RedisClusterEngine.from_url(
            self.url,
            Keyspace(namespace),
            partitioning=partitioning,
            maxlen=keep,
            retention=RetentionPolicy(retain=keep),
        )

    def wait_ok(self) -> None:
        """Until every node reports ``cluster_state:ok`` (slots assigned, nodes agreeing)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in cluster_info(p) for p in self.ports):
                return
            time.sleep(0.05)
        states = {p: cluster_info(p).split("\r\n", 1)[0] for p in self.ports}
        raise TimeoutError(f"the Redis Cluster did not become ok in {self.timeout} s: {states}")

    def move_slot(self, slot: int, to_port: int) -> None:
        """Migrate one slot, keys and all, to the master at ``to_port`` (what a resharding
        does slot by slot): clients meet ASK while it moves and MOVED after."""
        clients = {p: redis.Redis(host=DEFAULT_HOST, port=p) for p in self.ports}
        try:
            ids = {p: c.execute_command("CLUSTER", "MYID").decode() for p, c in clients.items()}
            source = self.port_of_slot(slot)
            if source == to_port:
                return
            clients[to_port].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            clients[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])
            while keys := clients[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                clients[source].execute_command(
                    "MIGRATE", DEFAULT_HOST, to_port, "", 0, 5000, "KEYS", *keys
                )
            for port in (to_port, source, *self.ports):
                clients[port].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
        finally:
            for client in clients.values():
                client.close()
        self.wait_ok()

    def port_of_slot(self, slot: int) -> int:
        """The port of the master serving ``slot`` (as the first node sees it)."""
        with redis.Redis(host=DEFAULT_HOST, port=self.ports[0]) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(f"slot {slot} is not served by any master")

    def kill(self) -> None:
        for server in self.servers:
            server.kill()

    def restart(self) -> None:
        for server in self.servers:
            server.restart()
        self.wait_ok()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []
