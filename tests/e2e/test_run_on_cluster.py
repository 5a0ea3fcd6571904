"""``quantum run`` on a 3-master Redis Cluster (``redis+cluster://``), the control plane
included, with the ticks and signals split in partitions: it runs to the end of a recorded
feed, prints the summary, and its signals are the backtest's (each symbol's, in order)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.backtest import run_backtest
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.engines import open_engine
from tests.conformance.harness_cluster import RedisClusterHarness
from tests.e2e.test_backtest_vs_run import FEED, SIGNALS, _by_symbol

pytestmark = pytest.mark.slow

SPLIT = "market.tick=3,ai.signal.generated=3"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterHarness]:
    started = RedisClusterHarness()
    yield started
    started.stop()


async def _signals(url: str, namespace: str) -> list[Envelope]:
    partitioning = Partitioning.parse(SPLIT)
    engine = open_engine(url, Keyspace(namespace), partitioning=partitioning)
    try:
        return [
            Envelope.FromString(data)
            for topic in partitioning.topics(SIGNALS)
            for _, data in await engine.read(topic)
        ]
    finally:
        await engine.close()


def test_quantum_run_on_a_cluster_gives_the_backtests_signals(
    cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    namespace = "on-cluster"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "run",
            "--redis-url",
            cluster.url,
            "--namespace",
            namespace,
            "--state-dir",
            str(tmp_path),
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--feed",
            str(FEED),
            "--speed",
            "max",
            "--stream-partitions",
            SPLIT,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Quantum Trader run summary" in result.stdout
    assert "CROSSSLOT" not in result.stderr
    assert "control_plane_started" in result.stderr
    live = asyncio.run(_signals(cluster.url, namespace))
    backtest = [
        e
        for e in asyncio.run(run_backtest(FEED, equity=Decimal(100_000))).events()
        if e.event_type == SIGNALS
    ]
    assert len(backtest) > 0
    assert _by_symbol(live) == _by_symbol(backtest)
