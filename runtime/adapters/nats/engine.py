"""NATS JetStream as an ``Engine`` (``nats://host:port``). Per namespace:

- a stream of events, a subject per topic (``<ns>.ev.<topic>``), kept per subject to what
  ``retention`` allows (publishers and commits wait for room instead of losing entries);
- a stream of dead letters (``<ns>.dlq.<domain>``) and one of the trace index
  (``<ns>.trace.<trace id>``, bounded by age and count);
- a KV bucket of partition records, leases and heartbeats, and one of the policy
  (``policy_store``).

See ``subscription`` and ``committer`` for how the delivery guarantees are kept without a
multi-key transaction.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.nats.committer import JetStreamCommitter
from runtime.adapters.nats.connection import DEFAULT_DUPLICATE_WINDOW_S, Connection
from runtime.adapters.nats.keys import JetStreamKeyspace
from runtime.adapters.nats.log import JetStreamLog
from runtime.adapters.nats.names import JetStreamNames
from runtime.adapters.nats.operator_admin import JetStreamOperatorStore
from runtime.adapters.nats.policy_store import JetStreamPolicyStore
from runtime.adapters.nats.record import Partition, PartitionRecord
from runtime.adapters.nats.retention import RetentionPolicy, SubjectRetention
from runtime.adapters.nats.subscription import JetStreamSubscription
from runtime.core.actor import Actor
from runtime.core.dead_letters import DeadLetter
from runtime.core.delivery import DeliveryLoop, RunnerConfig, input_streams
from runtime.core.envelope import EnvelopeError, decode_envelope
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.operator_store import read_letters, read_log
from runtime.core.partitioning import UNPARTITIONED, Partitioning
from runtime.core.policy.model import Policy
from runtime.core.publisher import Publisher
from runtime.core.registry import EventRegistry, default_registry


class JetStreamPublisher(Publisher):
    """The publisher (batching, retries, bounded buffer) on this engine's event log."""

    def __init__(
        self,
        log: JetStreamLog,
        partitioning: Partitioning,
        *,
        producer: str = "",
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        super().__init__(log, producer=producer, metrics=metrics, partitioning=partitioning)
        self.jetstream_log = log


class JetStreamRunner(DeliveryLoop):
    """Runs one actor (one partition of its domain) on its subjects' consumers."""

    def __init__(
        self,
        actor: Actor,
        engine: JetStreamEngine,
        config: RunnerConfig,
        *,
        registry: EventRegistry | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        registry = registry or default_registry()
        names = engine.names
        subjects = input_streams(
            actor,
            names.subject,
            registry,
            partitioning=engine.partitioning,
            partition=config.partition,
            partitions=config.partitions,
        )
        group = engine.keyspace.group(actor.name, config.partition, config.partitions)
        partition = Partition(engine.connection.kv, names.record_key(group))
        subscription = JetStreamSubscription(
            engine.connection,
            partition,
            domain=actor.name,
            group=group,
            subjects=subjects,
            start_id=config.start_id,
        )
        committer = JetStreamCommitter(
            engine.connection,
            partition,
            names.subject,
            engine.partitioning.topic,
            domain=actor.name,
            group=group,
            processed_ttl_s=config.processed_ttl_s,
            trace_index=engine.trace_index,
            retention=engine.retention,
        )
        super().__init__(
            actor,
            subscription,
            committer,
            config,
            group=group,
            registry=registry,
            metrics=metrics,
        )


class JetStreamEngine:
    """One NATS server (or cluster) with JetStream: see the module doc."""

    kind = "jetstream"

    def __init__(
        self,
        url: str,
        keyspace: Keyspace,
        *,
        partitioning: Partitioning | None = None,
        duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S,
        trace_index: bool = True,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.url = url
        self.trace_index = trace_index  # commits index their traces (costs a publish each)
        # Logs named as subjects (keys.JetStreamKeyspace), groups as any engine names them.
        self.keyspace: Keyspace = JetStreamKeyspace.of(keyspace)
        self.partitioning = partitioning or UNPARTITIONED
        self.names = JetStreamNames(Keyspace(keyspace.namespace))
        policy = retention or RetentionPolicy()
        self.connection = Connection(
            url,
            self.names,
            duplicate_window_s=duplicate_window_s,
            max_per_subject=policy.per_subject,
        )
        # One per engine (a process): the positions it reads are shared by its appenders.
        self.retention = SubjectRetention(self.connection, policy)

    @classmethod
    def from_url(
        cls,
        url: str,
        keyspace: Keyspace,
        *,
        partitioning: Partitioning | None = None,
        retention: RetentionPolicy | None = None,
    ) -> JetStreamEngine:
        """An engine on the NATS server at ``url`` (``nats://host:port``); it connects on
        first use and reconnects by itself."""
        return cls(url, keyspace, partitioning=partitioning, retention=retention)

    def publisher(
        self, *, producer: str = "", metrics: RuntimeMetrics | None = None
    ) -> JetStreamPublisher:
        return JetStreamPublisher(
            JetStreamLog(self.connection, self.retention),
            self.partitioning,
            producer=producer,
            metrics=metrics,
        )

    def runner(
        self,
        actor: Actor,
        config: RunnerConfig,
        publisher: Publisher,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> DeliveryLoop:
        if not isinstance(publisher, JetStreamPublisher):
            raise TypeError(f"a JetStream runner needs this engine's publisher; got {publisher!r}")
        return JetStreamRunner(actor, self, config, metrics=metrics)

    def policy_store(
        self, *, initial: Policy | None = None, staleness_s: float = 1.0
    ) -> JetStreamPolicyStore:
        """The PolicyStore on this engine's NATS (a KV bucket of its namespace); ``start()``
        it before use."""
        return JetStreamPolicyStore(self.connection, initial=initial, staleness_s=staleness_s)

    def operator_store(self) -> JetStreamOperatorStore:
        return JetStreamOperatorStore(self)

    async def read(self, topic: str, *, count: int = 10_000) -> list[tuple[str, bytes]]:
        return await read_log(self.operator_store(), self.keyspace.stream(topic), count)

    async def dead_letters(self, domain: str, *, count: int = 10_000) -> list[DeadLetter]:
        return await read_letters(self.operator_store(), self.keyspace.dlq(domain), count)

    async def trace(self, trace_id: str) -> list[Envelope]:
        """The indexed events of a trace, each once, ordered by event id (time order)."""
        seen: dict[str, Envelope] = {}
        for data in await self.operator_store().trace_items(trace_id):
            try:
                envelope = decode_envelope(data)
            except EnvelopeError:
                continue
            seen.setdefault(envelope.event_id, envelope)
        return [seen[event_id] for event_id in sorted(seen)]

    async def load_state(
        self, domain: str, partition: int = 0, partitions: int = 1
    ) -> bytes | None:
        kv = await self.connection.kv()
        key = self.names.record_key(self.keyspace.group(domain, partition, partitions))
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return PartitionRecord.decode(entry.value).state

    async def close(self) -> None:
        await self.connection.close()
