"""What the pipeline-level process tests share: a recorded feed, ``quantum run`` processes,
and reading what a run left in Redis (streams, groups, dead letters, state)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.redis.bus import ENVELOPE_FIELD
from runtime.core.keys import Keyspace

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD")
START_PRICES = {"BTC-USD": 60_000.0, "ETH-USD": 3_000.0, "SOL-USD": 150.0, "ADA-USD": 0.5}
CONSUMING_DOMAINS = ("ai_engine", "risk_safety", "execution", "portfolio", "analytics")


def write_feed(path: Path, ticks: int, *, seed: int, spacing_ms: int = 50) -> None:
    """A recorded CSV: ``ticks`` ticks round-robin over SYMBOLS, each price a seeded random
    walk (0.2 % steps), ``spacing_ms`` apart. The same arguments give the same file."""
    rng = random.Random(seed)
    prices = dict(START_PRICES)
    start = datetime(2026, 11, 23, 9, tzinfo=UTC)
    lines = ["time,symbol,price,volume"]
    for row in range(ticks):
        symbol = SYMBOLS[row % len(SYMBOLS)]
        prices[symbol] *= 1 + rng.gauss(0, 0.002)
        at = (start + timedelta(milliseconds=spacing_ms * row)).strftime("%Y-%m-%dT%H:%M:%S.%f")
        lines.append(f"{at[:-3]}Z,{symbol},{prices[symbol]:.4f},{rng.uniform(0.01, 2):.4f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def last_prices(path: Path) -> dict[str, Decimal]:
    """Each symbol's last price in a feed written by ``write_feed``."""
    last: dict[str, Decimal] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        _, symbol, price, _ = line.split(",")
        last[symbol] = Decimal(price)
    return last


def quantum_run(url: str, namespace: str, state_dir: Path, *extra: str) -> list[str]:
    """The argv of ``quantum run`` in ``namespace`` on ``url`` (no control plane)."""
    return [
        sys.executable,
        "-m",
        "runtime.cli",
        "run",
        "--redis-url",
        url,
        "--namespace",
        namespace,
        "--state-dir",
        str(state_dir),
        "--no-control-plane",
        "--log-level",
        "WARNING",
        "--log-format",
        "json",
        *extra,
    ]


@dataclass
class RunProcess:
    """One ``quantum run`` process, restartable; its output goes to ``log``."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)  # exit codes it was not killed for

    def start(self, argv: Sequence[str] | None = None) -> None:
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                list(argv or self.argv),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def terminate(self, timeout: float = 60.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def stream_envelopes(client: redis.Redis, keyspace: Keyspace, event_type: str) -> list[Envelope]:
    """Every envelope on ``event_type``'s stream in order, each event once (a publisher's
    retry after a lost reply may append an event twice: same event id, skipped by consumers)."""
    seen: set[str] = set()
    envelopes: list[Envelope] = []
    entries: list[Any] = client.xrange(keyspace.stream(event_type)) or []
    for _, fields in entries:
        envelope = entry_envelope(fields)
        if envelope.event_id not in seen:
            seen.add(envelope.event_id)
            envelopes.append(envelope)
    return envelopes


def entry_envelope(fields: Any) -> Envelope:
    """The envelope of one stream entry (its fields as redis-py returns them)."""
    data = fields[ENVELOPE_FIELD]
    assert isinstance(data, bytes), f"not an event entry: {fields!r}"
    return Envelope.FromString(data)


def unfinished_groups(client: redis.Redis, keyspace: Keyspace) -> dict[str, tuple[int, int]]:
    """Every (stream, group) with entries not yet read (lag) or not acknowledged (pending)."""
    left: dict[str, tuple[int, int]] = {}
    for stream in client.scan_iter(match=keyspace.stream("*"), count=1000):
        for info in client.xinfo_groups(stream):
            lag, pending = info.get("lag"), int(info.get("pending") or 0)
            if lag is None or int(lag) or pending:
                left[f"{stream.decode()} {info['name'].decode()}"] = (
                    -1 if lag is None else int(lag),
                    pending,
                )
    return left


def dead_letters(client: redis.Redis, keyspace: Keyspace) -> dict[str, int]:
    """Each domain's dead-letter count (only those with any)."""
    counts = {domain: int(client.xlen(keyspace.dlq(domain))) for domain in CONSUMING_DOMAINS}
    return {domain: count for domain, count in counts.items() if count}


def saved_state(client: redis.Redis, keyspace: Keyspace, domain: str) -> dict[str, object]:
    """A domain's saved state (partition 0 of 1), decoded from its JSON snapshot."""
    data = client.get(keyspace.state(domain))
    assert data is not None, f"{domain} saved no state"
    state = json.loads(data)
    assert isinstance(state, dict)
    return state
