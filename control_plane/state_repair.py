"""Repairing a domain's saved state: rebuild it from the retained inputs, or reset it.

A poisoned state (written before a door check existed, or by hand) does not heal by itself:
the runner restores it at every start. A repair builds a fresh actor from the same factory
replays use, feeds it every input its streams still retain, in stream order (entries of
several streams merged by entry id, as the runner reads them), skipping the ones it refuses,
and stores the resulting snapshot where the runner keeps it (``OperatorStore
.store_repaired_state``, ``state_name``).

The store replaces the state, raises the partition's state epoch and appends the repair
record: on one Redis in one MULTI/EXEC (the state, an INCR of the epoch, the record); on a
Redis Cluster the record first, then the state and the epoch of the partition's group; on
JetStream the record first, then the partition's KV record (state and epoch) by
compare-and-set. The epoch is the hand-over to a running runner, which holds its state in
memory and would write it back at its next commit: a runner that sees the epoch move (on
JetStream: whose compare-and-set fails) reloads the state first, and its commit never
overwrites a state newer than its epoch.

What a rebuild cannot know: it runs under today's policy, with outputs discarded and the
paper exchange the factory builds, so a domain whose decisions depend on the policy of the
time (risk_safety) may end with a slightly different book than it had. A reset is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from quantum.control.v1 import replay_service_pb2 as pb
from quantum.events.v1.envelope_pb2 import Envelope

from control_plane.errors import ControlPlaneError, Reason, bad_field
from control_plane.event_streams import EventStreams
from control_plane.stored_events import ENVELOPE_FIELD, parse_envelope
from runtime.core.actor import Actor, deliver
from runtime.core.delivery import entry_order
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import partition_of

PAGE = 1000
MAX_REFUSED_SHOWN = 20
MAX_RECORDS_KEPT = 10_000
ActorFactory = Callable[[], object]


@dataclass(frozen=True, slots=True)
class _Input:
    stream: str
    entry_id: str
    envelope: Envelope | None


class StateRepairer:
    """Rebuilds or resets one domain's state; used by ReplayService.RepairDomainState."""

    def __init__(
        self,
        store: OperatorStore,
        streams: EventStreams,
        factories: Mapping[str, ActorFactory],
    ) -> None:
        self._store = store
        self._streams = streams
        self._keyspace = streams.keyspace
        self._registry = streams.registry
        self._factories = factories

    def actor(self, domain: str) -> Actor:
        """A fresh actor of ``domain``; NOT_FOUND / FAILED_PRECONDITION when there is none."""
        factory = self._factories.get(domain)
        if factory is None:
            available = ", ".join(sorted(self._factories)) or "none (serve it with quantum run)"
            raise ControlPlaneError(
                grpc.StatusCode.NOT_FOUND,
                f"domain {domain!r} cannot be repaired here; available: {available}",
                Reason.DOMAIN_UNKNOWN,
                {"domain": domain},
            )
        actor = factory()
        if not isinstance(actor, Actor):
            raise ControlPlaneError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"domain {domain!r} is a feed, not an actor: it keeps no state to repair",
                Reason.DOMAIN_UNKNOWN,
                {"domain": domain},
            )
        return actor

    async def repair(
        self, request: pb.RepairDomainStateRequest, changed_by: str
    ) -> pb.RepairDomainStateResponse:
        domain = request.domain
        partitions = request.partitions or 1
        if not request.reason.strip():
            raise bad_field("reason", "is required: say why the state is repaired")
        if len(request.reason) > 1000:
            raise bad_field("reason", "must be at most 1000 characters")
        if request.mode not in (pb.REPAIR_MODE_REBUILD, pb.REPAIR_MODE_RESET):
            raise bad_field("mode", "must be REPAIR_MODE_REBUILD or REPAIR_MODE_RESET")
        if not 1 <= partitions <= 1024 or request.partition >= partitions:
            raise bad_field("partition", "must be in 0..partitions-1 (partitions 1..1024)")
        actor = self.actor(domain)
        replayed, refused = 0, list[str]()
        if request.mode == pb.REPAIR_MODE_REBUILD:
            replayed, refused = await self._rebuild(actor, request.partition, partitions)
        state = actor.snapshot_state() or b""
        key = self._store.state_name(domain, request.partition, partitions)
        record = pb.StateRepair(
            domain=domain,
            mode=request.mode,
            changed_by=changed_by,
            reason=request.reason,
            changed_at=_now(),
            inputs_replayed=replayed,
            inputs_refused=len(refused),
            state_bytes=len(state),
            state_key=key,
        )
        response = pb.RepairDomainStateResponse(
            refused_inputs=refused[:MAX_REFUSED_SHOWN], stored=not request.dry_run
        )
        if request.dry_run:
            record.state_epoch = await self._store.state_epoch(
                domain, request.partition, partitions
            )
        else:
            record.state_epoch = await self._store_state(
                domain, request.partition, partitions, state, record
            )
        response.repair.CopyFrom(record)
        return response

    async def _rebuild(
        self, actor: Actor, partition: int, partitions: int
    ) -> tuple[int, list[str]]:
        inputs = await self._retained_inputs(actor)
        replayed, refused = 0, []
        await actor.on_start()
        try:
            for item in inputs:
                envelope = item.envelope
                if envelope is None:
                    refused.append(f"{item.stream} {item.entry_id}: not a decodable envelope")
                    continue
                if partition_of(envelope.partition_key, partitions) != partition:
                    continue
                replayed += 1
                try:
                    await deliver(actor, envelope, self._registry)
                except Exception as exc:  # refused (or failing) inputs change nothing: skip
                    refused.append(f"{item.stream} {item.entry_id}: {type(exc).__name__}: {exc}")
        finally:
            await actor.on_stop()
        return replayed, refused

    async def _retained_inputs(self, actor: Actor) -> list[_Input]:
        found: list[_Input] = []
        consumed = [event_type.name for event_type in type(actor).consumes(self._registry)]
        for stream in self._streams.of_types(consumed):
            start = "-"
            while True:
                entries = await self._store.range(stream, start, "+", PAGE)
                for entry_id, fields in entries:
                    data = fields.get(ENVELOPE_FIELD)
                    envelope = parse_envelope(data) if data is not None else None
                    found.append(_Input(stream, entry_id, envelope))
                if len(entries) < PAGE:
                    break
                start = "(" + entries[-1][0]
        found.sort(key=lambda item: entry_order(item.entry_id))  # stable: per-stream order kept
        return found

    async def _store_state(
        self, domain: str, partition: int, partitions: int, state: bytes, record: pb.StateRepair
    ) -> int:
        """State, epoch and record (``OperatorStore.store_repaired_state``); returns the new
        epoch (the record names it)."""

        def serialized(epoch: int) -> bytes:
            record.state_epoch = epoch
            return record.SerializeToString()

        return await self._store.store_repaired_state(
            domain, partition, partitions, state, serialized, MAX_RECORDS_KEPT
        )

    async def history(self, domain: str, page_size: int) -> list[pb.StateRepair]:
        """Repair records, newest first (of ``domain`` when given)."""
        found: list[pb.StateRepair] = []
        end = "+"
        while len(found) < page_size:
            entries = await self._store.range_reverse(
                self._keyspace.state_repairs(), end, "-", PAGE
            )
            for entry_id, fields in entries:
                record = _record(fields.get(b"record", b""))
                if record is not None and (not domain or record.domain == domain):
                    found.append(record)
                end = "(" + entry_id
            if len(entries) < PAGE:
                break
        return found[:page_size]


def _record(data: bytes) -> pb.StateRepair | None:
    if not data:
        return None
    record = pb.StateRepair()
    try:
        record.ParseFromString(data)
    except Exception:  # a foreign or damaged entry: not a record
        return None
    return record


def _now() -> Timestamp:
    now_ns = time.time_ns()
    return Timestamp(seconds=now_ns // 1_000_000_000, nanos=now_ns % 1_000_000_000)
