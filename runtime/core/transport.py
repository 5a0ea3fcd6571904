"""The transport boundary: the small interfaces the delivery loop needs of a broker.

Everything above this line (the delivery loop, the publisher, the domains) is broker-neutral;
everything below it (``runtime.adapters.<engine>``) is the only code that speaks a broker's
protocol. An engine provides four things (DESIGN section 4):

- ``EventLog``: append envelopes durably, in order, in batches;
- ``Subscription``: fetch batches of one domain's inputs, keep them alive while they are
  handled, deliver one again for a retry, take over what a dead consumer left;
- ``Committer``: make one batch's effects durable *atomically* — outputs, acknowledgements,
  processed marks, dead letters, the trace index and the actor's state — so that
  "acknowledged", "processed" and "state" never disagree;
- ``TransportAdmin``: groups, positions and lag, for health and operators.

Which guarantee each piece carries:
- at-least-once: ``Committer.commit`` acknowledges only what it also marks processed, in the
  same atomic step as the outputs and the state; a crash before it redelivers the batch;
- effectively-once: ``Subscription.processed`` answers which event ids were committed before,
  so a redelivered input is acknowledged without running its handler again;
- durable attempt counts: ``Delivery.deliveries`` comes from the broker (it survives restarts),
  and ``Subscription.redeliver`` counts a retry as a new delivery;
- broker errors are classified by the engine (``is_transient``): the loop retries those with
  capped backoff and treats anything else as a bug to surface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.dead_letters import DeadLetter


@dataclass(frozen=True, slots=True)
class Lease:
    """Ownership of one domain partition: who holds it and its fencing token.

    Tokens only grow: a commit carries the token it was made under, and the committer refuses
    it once another owner holds a newer one, so a stale owner (paused, partitioned away) can
    never overwrite its successor's work.
    """

    holder: str
    token: int


class LeaseLost(Exception):
    """This process no longer owns the partition: another owner took it (or it expired).

    Its uncommitted work is void; the delivery loop rolls its state back and stands by.
    """


class Backpressure(RuntimeError):
    """A stream stayed full (its slowest consumer group a whole length limit behind) for
    longer than an append may wait: nothing was appended."""


class Delivery:
    """One stored entry in a consumer's hands.

    ``data`` is the envelope's bytes as stored; None when the entry is gone (trimmed while it
    was pending) and b"" when it carries no envelope (a foreign entry: dead-lettered).
    ``deliveries`` counts this delivery too (1 on the first).
    """

    __slots__ = ("data", "deliveries", "entry_id", "envelope", "stream")

    def __init__(self, stream: str, entry_id: bytes, data: bytes | None, deliveries: int) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.data = data
        self.deliveries = deliveries
        self.envelope: Envelope | None = None  # set once decoded

    def __repr__(self) -> str:
        return f"Delivery({self.stream!r}, {self.entry_id!r}, deliveries={self.deliveries})"


@dataclass(slots=True)
class Commit:
    """What one commit makes durable, all or nothing.

    ``outputs`` are the envelopes the batch's handlers emitted, in order; ``acks`` the entries
    to acknowledge, per stream; ``processed`` the event ids handled (their dedupe marks);
    ``dead`` the dead letters; ``indexed`` the envelopes that caused outputs and that no
    earlier commit indexed (roots of traces); ``state`` the actor's snapshot (None: keep the
    stored one).
    """

    outputs: list[Envelope] = field(default_factory=list)
    acks: dict[str, list[bytes]] = field(default_factory=dict)
    processed: list[str] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    indexed: list[Envelope] = field(default_factory=list)
    state: bytes | None = None
    lease: Lease | None = None  # the ownership this commit was made under (checked)
    consumed: dict[str, int] = field(default_factory=dict)  # event type -> handled (metrics)

    def ack(self, delivery: Delivery) -> None:
        ids = self.acks.get(delivery.stream)
        if ids is None:
            self.acks[delivery.stream] = [delivery.entry_id]
        else:
            ids.append(delivery.entry_id)

    def clear(self) -> None:
        self.outputs = []
        self.acks = {}
        self.processed = []
        self.dead = []
        self.indexed = []
        self.state = None
        self.consumed = {}  # the lease stays: it is the loop's, not the batch's

    def __bool__(self) -> bool:
        return bool(self.acks or self.outputs or self.dead)


@dataclass(frozen=True, slots=True)
class GroupPosition:
    """Where one consumer group stands on one stream."""

    stream: str
    group: str
    pending: int
    lag: int | None  # entries not yet delivered to the group; None when the engine can't tell


class EventLog(Protocol):
    """Appends envelopes durably: when ``append`` returns, every one of them is stored."""

    async def append(self, records: Sequence[tuple[str, bytes]]) -> list[str]:
        """Store (topic, serialized envelope) records in order, each on its topic's stream
        (a topic is one partition of an event type's log: ``runtime.core.partitioning``);
        return their entry ids."""
        ...

    def is_transient(self, exc: BaseException) -> bool:
        """True when the same append can simply be tried again later."""
        ...

    async def close(self) -> None: ...


class Subscription(Protocol):
    """One domain partition's view of its input streams."""

    @property
    def streams(self) -> Sequence[str]: ...

    async def open(self) -> None:
        """Make sure the consumer groups exist (idempotent); recreate them when missing."""
        ...

    async def fetch(self, *, pending: bool, count: int, block_ms: int) -> list[Delivery]:
        """The next entries of this consumer, merged across streams in time order.

        ``pending=True``: entries delivered to this consumer before and not yet acknowledged
        (a previous life's work), with their durable delivery counts, without blocking.
        ``pending=False``: new entries, waiting up to ``block_ms`` for some.
        """
        ...

    async def take_over(self) -> int:
        """Make every entry pending in this group this consumer's (a new owner finishes what
        the last one left, in stream order); returns how many were taken over."""
        ...

    async def redeliver(self, delivery: Delivery) -> bool:
        """Deliver one entry again (a retry); False when it is no longer this consumer's."""
        ...

    async def processed(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids some earlier commit of this domain marked processed."""
        ...

    async def recreate(
        self, error: BaseException, after: Mapping[str, bytes]
    ) -> list[tuple[str, bytes]] | None:
        """If ``error`` says a group is gone, recreate it on each stream after the entry
        ``after`` names (the last one acknowledged; the group's start when none) and return
        the (stream, position) pairs recreated; None when ``error`` is something else."""
        ...

    def is_transient(self, exc: BaseException) -> bool: ...

    async def positions(self) -> list[GroupPosition]:
        """Pending and lag of this consumer's group on each of its streams."""
        ...

    async def close(self) -> None: ...


class Committer(Protocol):
    """Makes a batch's effects durable atomically, gives back the stored state, and keeps
    the partition's ownership lease (the commit checks it: fencing)."""

    async def load_state(self) -> bytes | None: ...

    async def commit(self, commit: Commit) -> None:
        """Store everything ``commit`` holds in one atomic step (see ``Commit``); raise
        ``LeaseLost`` when ``commit.lease`` is no longer the partition's current one."""
        ...

    async def acquire(self, holder: str, ttl_ms: int) -> Lease | None:
        """Take the partition's lease (or extend it when ``holder`` has it); None while
        another holder's lease is live."""
        ...

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        """Extend ``lease``; False when it is no longer current (lost)."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the lease up (a clean stop), so a successor need not wait for it to expire."""
        ...

    async def heartbeat(self, consumer: str, at_ms: int) -> None: ...

    def is_transient(self, exc: BaseException) -> bool: ...

    async def close(self) -> None: ...


class TransportAdmin(Protocol):
    """Groups and positions, for health, metrics and operators."""

    async def positions(self, streams: Sequence[str], group: str) -> list[GroupPosition]: ...
