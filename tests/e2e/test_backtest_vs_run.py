"""The backtest's signals are those of a live ``quantum run`` on the same recording: signals
depend only on each symbol's ticks in order, so the two must agree (ids aside, which a live
feed draws afresh)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest
import redis
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.backtest import run_backtest
from runtime.core.envelope import open_payload
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning

ROOT = Path(__file__).resolve().parents[2]
FEED = ROOT / "tests" / "fixtures" / "ticks_small.csv"
SIGNALS = "ai.signal.generated"


def _by_symbol(envelopes: list[Envelope]) -> dict[str, list[bytes]]:
    """Each symbol's signals in order, without their ids (the tick's id is in them)."""
    found: dict[str, list[bytes]] = {}
    for envelope in envelopes:
        payload = open_payload(envelope)
        payload.ClearField("signal_id")
        symbol = envelope.partition_key
        found.setdefault(symbol, []).append(payload.SerializeToString(deterministic=True))
    return found


@pytest.mark.parametrize(
    "split",
    [
        [],
        # Producer-side partitions: the ticks and signals in several logs each, the domains
        # over three processes; every symbol's signals still in order.
        ["--stream-partitions", "market.tick=4,ai.signal.generated=2", "--workers", "3"],
    ],
    ids=["one-log-per-type", "partitioned"],
)
def test_the_backtest_generates_the_signals_of_a_live_run(
    redis_server_url: str,
    keyspace: Keyspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    split: list[str],
) -> None:
    for name in [k for k in os.environ if k.startswith("QUANTUM_")]:
        monkeypatch.delenv(name)  # the live child and the backtest see the same settings
    live = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "run",
            "--redis-url",
            redis_server_url,
            "--namespace",
            keyspace.namespace,
            "--state-dir",
            str(tmp_path),
            "--metrics-addr",
            "127.0.0.1:0",
            "--feed",
            str(FEED),
            "--speed",
            "max",
            "--no-control-plane",
            *split,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert live.returncode == 0, live.stderr[-3000:]
    topics = Partitioning.parse(split[1] if split else "").topics(SIGNALS)
    client = redis.Redis.from_url(redis_server_url)
    try:
        entries = [
            entry
            for topic in topics
            for entry in cast(
                list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keyspace.stream(topic))
            )
        ]
    finally:
        client.close()
    live_signals = [Envelope.FromString(fields[b"envelope"]) for _, fields in entries]
    result = asyncio.run(run_backtest(FEED, equity=Decimal(100_000)))
    backtest_signals = [e for e in result.events() if e.event_type == SIGNALS]
    assert len(backtest_signals) > 0
    assert _by_symbol(backtest_signals) == _by_symbol(live_signals)
