"""A max-speed feed of 100,000 ticks, then one of 200,000, through the six domains: every
domain handles every tick, and Redis ends each run at the size the README's "Sizing Redis"
gives, the same after twice as many ticks.

Each run is ``quantum run --workers 1 --speed max`` over a recorded CSV on a private
redis-server, with a 5 s dedupe horizon, ``--retain 1000`` and ``--max-traces 5000``. After the
run has drained and the horizon has passed, a SCAN visits every key (so Redis frees the expired
dedupe sets now rather than when its background expiry gets to them) and INFO memory gives
``used_memory``; MEMORY USAGE gives what each kind of key holds.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from runtime.core.keys import Keyspace
from runtime.core.redis_server import RedisServer, start_redis_server
from tests.process.pipeline import ROOT, quantum_run, write_feed

pytestmark = pytest.mark.slow

TICKS = 100_000
RETAIN = 1_000
MAX_TRACES = 5_000
DEDUPE_HORIZON_S = 5
# The sizes "Sizing Redis" states (MEMORY USAGE ... SAMPLES 0 on these runs, rounded up):
BYTES_PER_EVENT = 500  # a retained stream entry (measured 230 for a tick to 470 for a signal)
BYTES_PER_TRACE = 1_200  # a trace's list and its registry entry (measured about 990)
BASE_BYTES = 2_000_000  # an empty redis-server (about 1 MB) with its clients, state, policy
# The committers prune the trace index every TRACE_PRUNE_INTERVAL_S (5 s), so it may hold
# that many seconds of new traces beyond --max-traces; every trace starts at a tick.
TRACE_PRUNE_INTERVAL_S = 5.0
SAME_MEMORY_TOLERANCE = 0.10
STREAM_NODE_ENTRIES = 100  # Redis's stream-node-max-entries
TICK_GROUPS = ("ai_engine", "execution", "portfolio")


@dataclass(frozen=True)
class RunFigures:
    ticks: int
    seconds: float
    used_memory: int
    streams: dict[str, int]  # entries each stream holds
    traces: int
    trace_bytes: int
    backpressure_waits: int

    @property
    def bound(self) -> int:
        """Redis's size by the README's formula, for what the run holds."""
        return (
            BASE_BYTES
            + sum(self.streams.values()) * BYTES_PER_EVENT
            + self.traces * BYTES_PER_TRACE
        )

    @property
    def without_trace_overshoot(self) -> int:
        """``used_memory`` less the traces held beyond --max-traces (the prune interval's)."""
        extra = max(0, self.traces - MAX_TRACES)
        return self.used_memory - extra * self.trace_bytes // max(1, self.traces)


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    server = start_redis_server(workdir=tmp_path / "redis")
    yield server
    server.stop()


def _run(server: RedisServer, workdir: Path, ticks: int, namespace: str) -> RunFigures:
    feed = workdir / f"feed-{ticks}.csv"
    write_feed(feed, ticks, seed=5)
    keyspace = Keyspace(namespace)
    argv = quantum_run(
        server.url,
        namespace,
        workdir / f"state-{ticks}",
        "--feed",
        str(feed),
        "--speed",
        "max",
        "--workers",
        "1",
        "--dedupe-horizon",
        str(DEDUPE_HORIZON_S),
        "--retain",
        str(RETAIN),
        "--max-traces",
        str(MAX_TRACES),
        "--log-level",
        "INFO",
    )
    log = workdir / f"run-{ticks}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.call(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    seconds = time.monotonic() - started
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    names = [event.get("event") for event in events]
    assert code == 0, f"quantum run exited {code}; see {log}"
    assert "outputs_waiting_for_room" not in names
    assert not any("Backpressure" in line for line in log.read_text().splitlines())

    client = redis.Redis.from_url(server.url)
    try:
        ticks_stream = keyspace.stream("market.tick")
        assert client.xinfo_stream(ticks_stream)["entries-added"] == ticks
        read = {g["name"].decode(): g["entries-read"] for g in client.xinfo_groups(ticks_stream)}
        assert read == dict.fromkeys(TICK_GROUPS, ticks), "a domain missed ticks"
        streams: dict[str, int] = {}
        for stream in client.scan_iter(match=keyspace.stream("*")):
            streams[stream.decode()] = int(client.xlen(stream))
            for group in client.xinfo_groups(stream):
                assert (group["lag"], group["pending"]) == (0, 0), (stream, group)

        time.sleep(DEDUPE_HORIZON_S + 1)
        keys = list(client.scan_iter(match=keyspace.pattern(), count=1_000))  # frees expired
        assert not [k for k in keys if k.startswith(keyspace.processed("").encode())]
        traces = [k for k in keys if k.startswith(keyspace.trace("").encode())]
        with client.pipeline(transaction=False) as pipe:
            for key in traces:
                pipe.memory_usage(key, samples=0)
            pipe.memory_usage(keyspace.trace_registry(), samples=0)
            pipe.zcard(keyspace.trace_registry())
            replies = pipe.execute()
        indexed = int(replies[-1])
        used = int(client.info("memory")["used_memory"])
    finally:
        client.close()
    figures = RunFigures(
        ticks=ticks,
        seconds=seconds,
        used_memory=used,
        streams=streams,
        traces=indexed,
        trace_bytes=sum(int(r or 0) for r in replies[:-1]),
        backpressure_waits=names.count("backpressure"),
    )
    print(
        f"{ticks} ticks in {seconds:.1f} s ({ticks / seconds:,.0f}/s), "
        f"{figures.backpressure_waits} backpressure waits; used_memory "
        f"{used / 1e6:.1f} MB (bound {figures.bound / 1e6:.1f} MB), {indexed} traces "
        f"({figures.trace_bytes / 1e6:.1f} MB), stream entries {sum(streams.values())}"
    )
    # The trace index: --max-traces, plus at most one prune interval of new traces.
    assert indexed <= MAX_TRACES + TRACE_PRUNE_INTERVAL_S * ticks / seconds
    # At rest, drained: the process trimmed each stream it wrote to at its stop, to its history
    # (XTRIM MAXLEN ~ frees whole nodes of 100 entries), whatever backlog the run had.
    for stream, length in streams.items():
        assert length <= RETAIN + STREAM_NODE_ENTRIES, stream
    assert used <= figures.bound
    return figures


# Two max-speed runs in one process: 2,700-7,600 ticks/s on a shared 2-core machine, whose
# speed swings with its other work; the bound allows the slowest seen with room to spare.
@pytest.mark.timeout(480)
def test_memory_is_bounded_and_does_not_grow_with_the_run(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    short = _run(redis_server, tmp_path, TICKS, "memory-short")
    with redis.Redis.from_url(redis_server.url) as client:  # the second run starts empty
        client.flushall()
    long = _run(redis_server, tmp_path, 2 * TICKS, "memory-long")
    print(
        f"without the trace index's prune overshoot: {short.without_trace_overshoot / 1e6:.1f}"
        f" MB after {short.ticks}, {long.without_trace_overshoot / 1e6:.1f} MB after "
        f"{long.ticks}"
    )
    assert long.without_trace_overshoot <= short.without_trace_overshoot * (
        1 + SAME_MEMORY_TOLERANCE
    )
    assert long.used_memory <= short.bound * (1 + SAME_MEMORY_TOLERANCE) + (
        TRACE_PRUNE_INTERVAL_S * long.ticks / long.seconds * BYTES_PER_TRACE
    )
