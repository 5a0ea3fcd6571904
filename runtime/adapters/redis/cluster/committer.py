"""``Committer`` on a Redis Cluster: a batch's effects in three steps, in an order that keeps
the delivery guarantees when a crash falls between them (DESIGN section 8).

On a single Redis one MULTI/EXEC holds everything; a cluster runs a MULTI/EXEC only within
one slot, and a batch touches several: its outputs' streams, the trace index, its inputs'
streams and its partition's slot (``ClusterKeyspace``). So:

0. WATCH the partition's lease and state epoch on its master and check them (fencing:
   ``LeaseLost`` as on a single Redis, before anything is written);
1. XADD the outputs, pipelined per master, and the trace index (best effort: it only helps
   operators find a trace). An output's event id derives from its input's, so when this
   commit is redone after a crash the copies it appends again are skipped downstream by
   their processed marks. Dead letters go here when the domain's dead-letter stream is not
   in the partition's slot (a split domain), with a record of the entries they stand for,
   so a redone commit does not dead-letter an entry twice;
2. one MULTI/EXEC in the partition's slot, under the WATCH: the processed marks, the actor's
   state (and the dead letters when they share the slot). This is the commit point: after
   it, the batch counts as handled; before it, the inputs come back and are handled again;
3. XACK the inputs, per master. A crash before this leaves them pending; they come back,
   are found marked processed and are acknowledged without running a handler again.

A MOVED, ASK, TRYAGAIN or CLUSTERDOWN reply, or a lost master, fails the commit as a
transient error: the delivery loop retries it whole, after the slot map is reloaded, and
every step above is safe to repeat. No step ever spans two slots, so CROSSSLOT cannot occur.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from runtime.adapters.redis import marks
from runtime.adapters.redis.cluster.keys import ClusterKeyspace
from runtime.adapters.redis.cluster.nodes import ClusterRouter, NodeConnections
from runtime.adapters.redis.committer import (
    ACQUIRE_LEASE,
    RENEW_LEASE,
    TRACE_PRUNE_INTERVAL_S,
    lease_value,
    prune_trace_index,
)
from runtime.adapters.redis.errors import CommitFailed, is_transient
from runtime.adapters.redis.resp import RespConnection, pack
from runtime.adapters.redis.retention import StreamRetention
from runtime.adapters.redis.streams import StreamNames
from runtime.core.dead_letters import DLQ_MAXLEN, DeadLetter
from runtime.core.logs import get_logger
from runtime.core.trace_index import DEFAULT_MAX_TRACES, DEFAULT_TRACE_TTL_S
from runtime.core.transport import Backpressure, Commit, Lease, LeaseLost

_log = get_logger("runtime.adapters.redis.cluster")
_MULTI = pack(b"MULTI")
_EXEC = pack(b"EXEC")
_UNWATCH = pack(b"UNWATCH")


class ClusterCommitter:
    """Commits one domain partition's batches on a Redis Cluster (see the module doc)."""

    def __init__(
        self,
        router: ClusterRouter,
        keyspace: ClusterKeyspace,
        names: StreamNames,
        retention: StreamRetention,
        *,
        domain: str,
        partition: int = 0,
        partitions: int = 1,
        processed_ttl_s: int,
        trace_ttl_s: int = DEFAULT_TRACE_TTL_S,
        max_traces: int = DEFAULT_MAX_TRACES,
    ) -> None:
        self.router = router
        self.client = router.client
        self.keyspace = keyspace
        self.names = names
        self.retention = retention
        self.domain = domain
        self.group = group = keyspace.group(domain, partition, partitions)
        self.state_key = keyspace.state(domain, partition, partitions)
        self.lease_key = keyspace.lease(domain, partition, partitions)
        self.epoch_key = keyspace.state_epoch(group)
        self._tokens_key = keyspace.fencing_tokens_of(group)
        self._epoch: bytes | None = None
        self._acquire = self.client.register_script(ACQUIRE_LEASE)
        self._renew = self.client.register_script(RENEW_LEASE)
        self._watch = (
            pack(b"WATCH", self.lease_key, self.epoch_key)
            + pack(b"GET", self.lease_key)
            + pack(b"GET", self.epoch_key)
        )
        self._conns = router.connections()
        self._side = router.connections()  # dead letters in another slot (own MULTI)
        self._group_b = group.encode()
        self._dlq = keyspace.dlq(domain)
        self._dead_entries = keyspace.dead_lettered(domain)
        self._dlq_at_home = router.slot(self._dlq) == router.slot(self.state_key)
        self._dlq_maxlen = str(DLQ_MAXLEN).encode()
        self._processed_ttl = str(processed_ttl_s).encode()
        self._trace_ttl_s = trace_ttl_s
        self._trace_ttl = str(trace_ttl_s).encode()
        self.max_traces = max_traces
        self._pruned_at = 0.0
        self._indexed_since_prune = 0
        self._heartbeat_key = keyspace.heartbeat(domain)

    # -- state and the commit ---------------------------------------------------------------

    async def load_state(self) -> bytes | None:
        """The stored state, and (kept) the state epoch it belongs to."""
        try:
            await self.router.ready()
            data, epoch = await self._home().pipeline(
                [("GET", self.state_key), ("GET", self.epoch_key)]
            )
        except Exception as exc:
            self.router.note(exc)
            raise
        self._epoch = epoch
        return data if isinstance(data, bytes) else None

    async def commit(self, commit: Commit) -> None:
        try:
            await self.router.ready()
            if commit.outputs:
                await self._room_for(commit)
            home = self._home()
            lease = commit.lease
            if lease is not None:
                await self._check_lease(home, lease)
            dead = await self._new_dead_letters(commit.dead) if commit.dead else []
            await self._append(commit, [] if self._dlq_at_home else dead)
            body = self._pack_home(commit, dead if self._dlq_at_home else [])
            while not await self._exec(home, body):  # a WATCHed key changed: check again
                assert lease is not None
                await self._check_lease(home, lease)
            await self._acknowledge(commit.acks)
        except Exception as exc:
            self.router.note(exc)
            raise
        if commit.outputs and (
            self._indexed_since_prune >= max(1, self.max_traces // 10)
            or time.monotonic() - self._pruned_at >= TRACE_PRUNE_INTERVAL_S
        ):
            await self._prune_traces()

    def _home(self) -> RespConnection:
        """The connection to the master of this partition's slot (its commits' only user)."""
        return self._conns.of(self.state_key)

    async def _check_lease(self, home: RespConnection, lease: Lease) -> None:
        """Step 0: WATCH the lease and the state epoch and read them (see the module doc)."""
        _, current, epoch = await home.send_packed(self._watch, 3)
        for reply in (current, epoch):
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
        if current != lease_value(lease):
            await home.send_packed(_UNWATCH, 1)
            raise LeaseLost(
                f"{self.domain}: the lease {self.lease_key} is no longer held by "
                f"{lease.holder} (token {lease.token}); another owner took over"
            )
        if epoch != self._epoch:
            await home.send_packed(_UNWATCH, 1)
            raise LeaseLost(
                f"{self.domain}: its stored state was replaced (state repair, epoch "
                f"{epoch!r}); the runner reloads it and handles its pending entries again"
            )

    async def _append(self, commit: Commit, dead: list[DeadLetter]) -> None:
        """Step 1: outputs and trace index, per master, concurrently; the dead letters when
        they live in another slot than the partition's."""
        per_node: dict[str, list[bytes]] = {}
        node_of = self.router.node_of
        xadd = self.names.xadd
        topic = self.names.topic
        stream_of = self.names.of
        traces: dict[str, list[bytes]] = {}
        for envelope in commit.indexed:
            traces.setdefault(envelope.trace_id, []).append(envelope.SerializeToString())
        for envelope in commit.outputs:
            data = envelope.SerializeToString()
            out_topic = topic(envelope)
            per_node.setdefault(node_of(stream_of(out_topic)[0]), []).append(xadd(out_topic, data))
            traces.setdefault(envelope.trace_id, []).append(data)
        if traces:
            registry = self.keyspace.trace_registry()
            commands = per_node.setdefault(node_of(registry), [])
            now = str(time.time_ns() // 1_000_000).encode()
            zadd: list[bytes | str] = [b"ZADD", registry, b"NX"]
            self._indexed_since_prune += len(traces)
            for trace_id, items in traces.items():
                key = self.keyspace.trace(trace_id)
                commands.append(pack(b"RPUSH", key, *items))
                commands.append(pack(b"EXPIRE", key, self._trace_ttl))
                zadd += (now, trace_id)
            commands.append(pack(*zadd))
        await self._send(per_node)
        if dead:
            # On a connection of its own: an EXEC on the partition's connection (the dead
            # letters' master may be the partition's) would end step 0's WATCH.
            body = [_MULTI, *self._pack_dead(dead), _EXEC]
            await self._send({node_of(self._dlq): body}, self._side)

    async def _new_dead_letters(self, dead: list[DeadLetter]) -> list[DeadLetter]:
        """The dead letters not written yet by an earlier try of this commit."""
        members = [_dead_entry(letter) for letter in dead]
        conn = self._side.of(self._dlq)
        flags = await conn.call("SMISMEMBER", self._dead_entries, *members)
        return [letter for letter, seen in zip(dead, flags, strict=True) if not seen]

    def _pack_dead(self, dead: list[DeadLetter]) -> list[bytes]:
        parts: list[bytes] = []
        for letter in dead:
            command: list[Any] = [b"XADD", self._dlq, b"MAXLEN", b"~", self._dlq_maxlen, b"*"]
            for name, value in letter.fields().items():
                command += (name, value)
            parts.append(pack(*command))
        parts.append(pack(b"SADD", self._dead_entries, *(_dead_entry(d) for d in dead)))
        parts.append(pack(b"EXPIRE", self._dead_entries, self._processed_ttl))
        return parts

    def _pack_home(self, commit: Commit, dead: list[DeadLetter]) -> tuple[bytes, int]:
        """Step 2's MULTI/EXEC: dead letters (when in this slot), marks, state."""
        parts = [_MULTI]
        if dead:
            parts += self._pack_dead(dead)
        bucket = partial(self.keyspace.processed_bucket, self.group)
        parts += marks.pack_marks(bucket, commit.processed, self._processed_ttl)
        if commit.state is not None:
            parts.append(pack(b"SET", self.state_key, commit.state))
        parts.append(_EXEC)
        return b"".join(parts), len(parts)

    async def _exec(self, home: RespConnection, body: tuple[bytes, int]) -> bool:
        """Send step 2; False when a WATCHed key aborted it."""
        replies = await home.send_packed(*body)
        result = replies[-1]
        if isinstance(result, hiredis.ReplyError):  # EXECABORT, or MULTI refused
            # Say why: a queued command's refusal (MOVED when the slot moved since step 0,
            # which is transient) rather than the EXECABORT that follows it.
            cause = next((r for r in replies if isinstance(r, hiredis.ReplyError)), result)
            raise ResponseError(str(cause))
        if result is None:
            return False
        for reply in result:
            if isinstance(reply, hiredis.ReplyError):
                raise CommitFailed(f"Redis refused part of a commit of {self.domain}: {reply}")
        return True

    async def _acknowledge(self, acks: dict[str, list[bytes]]) -> None:
        """Step 3: XACK the inputs on their masters."""
        per_node: dict[str, list[bytes]] = {}
        group = self._group_b
        for stream, ids in acks.items():
            per_node.setdefault(self.router.node_of(stream), []).append(
                pack(b"XACK", stream, group, *ids)
            )
        await self._send(per_node)

    async def _send(
        self, per_node: dict[str, list[bytes]], conns: NodeConnections | None = None
    ) -> None:
        """Pipelined commands per master, the masters concurrently; an error reply raised."""
        if not per_node:
            return
        nodes = list(per_node)
        pool = conns or self._conns
        replies = await asyncio.gather(
            *(
                pool.to(node).send_packed(b"".join(per_node[node]), len(per_node[node]))
                for node in nodes
            )
        )
        for node_replies in replies:
            for reply in node_replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise ResponseError(str(reply))
                if isinstance(reply, list):  # an EXEC's replies
                    for inner in reply:
                        if isinstance(inner, hiredis.ReplyError):
                            raise ResponseError(str(inner))

    async def _room_for(self, commit: Commit) -> None:
        """Wait until every output stream has room (a runner never drops its outputs)."""
        appends = self.names.appends(self.names.topic(e) for e in commit.outputs)
        while True:
            try:
                await self.retention.make_room(appends)
                return
            except Backpressure as exc:
                _log.warning("outputs_waiting_for_room", domain=self.domain, error=str(exc))

    async def _prune_traces(self) -> None:
        self._pruned_at = time.monotonic()
        self._indexed_since_prune = 0
        await prune_trace_index(
            cast(aioredis.Redis, self.client), self.keyspace, self.max_traces, self._trace_ttl_s
        )

    # -- the lease and the heartbeat --------------------------------------------------------

    async def acquire(self, holder: str, ttl_ms: int) -> Lease | None:
        token = int(
            await self._acquire(keys=[self.lease_key, self._tokens_key], args=[holder, ttl_ms])
        )
        return Lease(holder, token) if token > 0 else None

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[self.lease_key], args=[lease_value(lease), ttl_ms]))

    async def release(self, lease: Lease) -> None:
        await self._renew(keys=[self.lease_key], args=[lease_value(lease), 0])

    async def heartbeat(self, consumer: str, at_ms: int) -> None:
        await self.client.hset(self._heartbeat_key, consumer, str(at_ms))

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        if self._indexed_since_prune:
            try:
                await self._prune_traces()
            except Exception as exc:  # the cluster away at stop: the next owner prunes
                _log.info("trace_prune_skipped", domain=self.domain, error=str(exc))
        await self._conns.close()
        await self._side.close()


def _dead_entry(letter: DeadLetter) -> str:
    return f"{letter.original_stream} {letter.original_entry_id}"
