"""Draining at stop: wait until the hosted domains have handled everything on their streams."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.core.actor import Actor
from runtime.core.delivery import entry_order
from runtime.core.keys import Keyspace
from runtime.core.operator_store import OperatorStore

DRAIN_TIMEOUT_S = 10.0


class Owned(Protocol):
    """A consumer this process runs: its group and the streams it reads (a delivery loop)."""

    @property
    def group(self) -> str: ...

    @property
    def streams(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class GroupStreams:
    """A group and its streams, for a caller that knows them without running the loops."""

    group: str
    streams: Sequence[str]


def groups_of(keyspace: Keyspace, actors: Sequence[Actor]) -> list[GroupStreams]:
    """The plain (unpartitioned) group of each actor, with the streams it reads."""
    return [
        GroupStreams(
            keyspace.group(actor.name), [keyspace.stream(t.name) for t in actor.consumes()]
        )
        for actor in actors
    ]


async def backlog_cleared(store: OperatorStore, owned: Sequence[Owned]) -> bool:
    """True when every group this process runs has read its streams to the end and holds
    nothing. Only those exact groups: another process's partition of the same domain is its
    own business (its drain, its health).

    Compares each group's last-delivered id with the stream's last id rather than trusting
    XINFO's ``lag``, which Redis can only estimate once a stream has been trimmed.
    """
    for consumer in owned:
        for stream in consumer.streams:
            positions = await store.read_positions(stream)
            if positions is None:  # no such stream yet, or empty: nothing to read
                continue
            last_id = entry_order(positions[0])
            for group in positions[1]:
                if group.group != consumer.group:
                    continue
                delivered = entry_order(group.last_delivered_id)
                if group.pending or delivered < last_id:
                    return False
    return True


async def drain(
    store: OperatorStore,
    owned: Sequence[Owned],
    timeout_s: float = DRAIN_TIMEOUT_S,
) -> bool:
    """Wait until the groups this process runs have handled everything on their streams;
    False when ``timeout_s`` passed first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await backlog_cleared(store, owned):
            return True
        await asyncio.sleep(0.05)
    return False
