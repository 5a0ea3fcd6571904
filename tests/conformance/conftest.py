"""The engine under test: every test here runs once per engine (ids ``redis``,
``redis_cluster``, ``jetstream``), each on a broker the suite started for itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from runtime.core.engine import Engine
from runtime.core.partitioning import Partitioning
from tests.conformance.harness import Harness, RedisHarness, new_namespace
from tests.conformance.harness_cluster import RedisClusterHarness
from tests.conformance.harness_jetstream import JetStreamHarness

HARNESSES: dict[str, type] = {
    "redis": RedisHarness,
    "redis_cluster": RedisClusterHarness,
    "jetstream": JetStreamHarness,
}
ENGINES = list(HARNESSES)


@pytest.fixture(scope="module", params=ENGINES)
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """One broker per engine per test module, restarted by the tests that crash it."""
    started: Harness = HARNESSES[request.param]()
    yield started
    started.stop()


@pytest.fixture
def namespace() -> str:
    return new_namespace()


@pytest.fixture
async def engine(harness: Harness, namespace: str) -> AsyncIterator[Engine]:
    """An unpartitioned engine in a namespace of this test's own."""
    opened = harness.open(namespace)
    yield opened
    await opened.close()


TICKS_IN_FOUR = Partitioning({"market.tick": 4})


@pytest.fixture
async def partitioned(harness: Harness, namespace: str) -> AsyncIterator[Engine]:
    """An engine whose ticks are split in four partitions by symbol."""
    opened = harness.open(namespace, TICKS_IN_FOUR)
    yield opened
    await opened.close()
