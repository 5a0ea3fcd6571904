"""The in-memory broker as an ``Engine`` (one process; deterministic with ``logical=True``)."""

from __future__ import annotations

from runtime.adapters.memory.broker import MemoryBroker
from runtime.adapters.memory.runner import MemoryBus, MemoryRunner
from runtime.core.actor import Actor
from runtime.core.dead_letters import DeadLetter
from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.operator_store import OperationUnsupported, OperatorStore
from runtime.core.partitioning import Partitioning
from runtime.core.publisher import Publisher


class MemoryEngine:
    """Streams, groups and commits on plain Python structures of this process."""

    kind = "memory"

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.keyspace: Keyspace = broker.keyspace
        self.partitioning: Partitioning = broker.partitioning

    def publisher(self, *, producer: str = "", metrics: RuntimeMetrics | None = None) -> MemoryBus:
        return MemoryBus(self.broker, producer=producer, metrics=metrics)

    def runner(
        self,
        actor: Actor,
        config: RunnerConfig,
        publisher: Publisher,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> DeliveryLoop:
        return MemoryRunner(actor, self.broker, config, metrics=metrics)

    async def read(self, topic: str, *, count: int = 10_000) -> list[tuple[str, bytes]]:
        stored = [entry for _, entry in self.broker.entries(self.broker.stream_of(topic))]
        return [(entry.entry_id.decode(), entry.data) for entry in stored[:count]]

    async def dead_letters(self, domain: str, *, count: int = 10_000) -> list[DeadLetter]:
        return list(self.broker.dead_letters.get(domain, []))[:count]

    async def load_state(
        self, domain: str, partition: int = 0, partitions: int = 1
    ) -> bytes | None:
        return self.broker.states.get(self.keyspace.state(domain, partition, partitions))

    def operator_store(self) -> OperatorStore:
        raise OperationUnsupported(
            "the in-memory engine of backtests keeps no log for operators: run on Redis, a "
            "Redis Cluster or JetStream to use the control plane"
        )

    async def close(self) -> None:
        return None
