"""``quantum run`` without ``--namespace`` is a reproducible demo: each run starts empty.

Two runs in a row on the same Redis both trade and publish the same ticks and signals
(signals depend only on the feed), and each deletes its namespace and policy snapshot when it
ends. With ``--namespace`` a run is persistent: its keys stay for the next one.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import redis

from runtime.core.keys import Keyspace
from tests.e2e.quantum_process import SUMMARY_TITLE, count, environment, run_command

pytestmark = pytest.mark.slow

NAMESPACE_LINE = re.compile(r"quantum run: namespace (quantum-run-[0-9a-f-]+) \(fresh")


def _keys(url: str, namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=Keyspace(namespace).pattern(), count=1000))
    finally:
        client.close()


def _run(url: str, state_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        run_command(url, None, state_dir, "--duration", "5", "--rate", "200", *extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environment(),
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_two_runs_in_a_row_both_trade_and_see_the_same_ticks_and_signals(
    redis_server_url: str, tmp_path: Path, workers: str
) -> None:
    runs = [_run(redis_server_url, tmp_path, "--workers", workers) for _ in range(2)]
    namespaces = []
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count(SUMMARY_TITLE) == 1
        found = NAMESPACE_LINE.search(result.stderr)
        assert found, result.stderr[:2000]
        namespaces.append(found.group(1))
        assert count(result.stdout, "trades") > 0
    first, second = (result.stdout for result in runs)
    assert namespaces[0] != namespaces[1]
    assert count(first, "market.tick") == count(second, "market.tick") == 1000
    signals = count(first, "ai.signal.generated")
    assert signals > 0
    assert count(second, "ai.signal.generated") == signals
    # nothing of either run is left behind
    for namespace in namespaces:
        assert _keys(redis_server_url, namespace) == []
    assert list(tmp_path.glob("policy-quantum-run-*.json")) == []


def test_a_named_namespace_is_kept_for_the_next_run(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    result = _run(redis_server_url, tmp_path, "--workers", "1", "--namespace", keyspace.namespace)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not NAMESPACE_LINE.search(result.stderr)
    assert Keyspace(keyspace.namespace).stream("market.tick").encode() in _keys(
        redis_server_url, keyspace.namespace
    )
    assert (tmp_path / f"policy-{keyspace.namespace}.json").is_file()
