"""The reads of ``OperatorStore`` on JetStream (``runtime.core.operator_store``).

Keys are subjects (``keys.JetStreamKeyspace``), each held by one of the namespace's streams
(``names.stream_of``); a subject of no stream of the namespace, or of a stream not created
yet, reads as a missing log. Entry ids are ``<ms>-<seq>`` (``log.entry_id``): the time the
server stored the message and its stream sequence. The sequence alone orders a stream, so a
bound that names one is compared by it (an id ``append`` returned carries the appender's
clock, not the server's); a bound of a time only (``<ms>``) by the stored time.

What JetStream makes different from Redis, each said again where it applies:

- a log is read forward only, through a short-lived consumer that acknowledges nothing
  (reads move no group): ``range_reverse`` reads a window before the end and widens it
  until it holds ``count`` entries;
- ``read_after`` polls (no blocking read of several subjects): per poll one stream-info
  call per stream, and a message lookup only for a subject whose stream grew;
- ``stream_counters`` counts the messages the subject *holds*, not those ever appended
  (JetStream keeps no per-subject append counter), and ``appended_since`` those it holds
  past a position: exact unless more were appended since than the subject keeps;
- a group is the runner's newest durable consumer on a subject (``names.consumer``).

How entries' fields are stored: an event's and a trace's message is the envelope
(``envelope``); a dead letter's a JSON header and the payload (``dead_letters``); an
operators' record on the ``ops`` stream: an audit entry one JSON object of text fields, a
repair record its bytes (``record``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, RawStreamMsg
from nats.js.errors import KeyNotFoundError, NotFoundError

from runtime.adapters.nats.dead_letters import decode_letter
from runtime.adapters.nats.log import entry_id
from runtime.adapters.nats.names import split_consumer, token
from runtime.core.operator_store import Entry, GroupFigures, GroupProgress

if TYPE_CHECKING:
    from runtime.adapters.nats.engine import JetStreamEngine

READ_BATCH = 1_000  # messages per pull of a read's consumer
READ_WAIT_S = 2.0  # how long a pull waits for messages the consumer said it holds
POLL_S = 0.05  # how often ``read_after`` looks again while it waits
PING_TIMEOUT_S = 1  # seconds
TAIL_WINDOW = 4  # ``range_reverse``: the first window is this many times ``count`` sequences
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_ACK_PREFIX = "$JS.ACK."


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a range: a sequence (when the id names one) or a time, maybe exclusive."""

    ms: int
    seq: int | None
    exclusive: bool
    below: bool = False  # a time bound from "<ms>-0": as an end, only entries before ``ms``

    def admits_from(self, ms: int, seq: int) -> bool:
        """As a start: the entry is at or after it."""
        if self.seq is None:
            return ms >= self.ms  # "<ms>" is "<ms>-0": "(" excludes no stored entry
        return seq > self.seq if self.exclusive else seq >= self.seq

    def admits_to(self, ms: int, seq: int) -> bool:
        """As an end: the entry is at or before it."""
        if self.seq is None:  # "<ms>" is "<ms>-<max>"; "<ms>-0" is before any stored at ms
            return ms < self.ms if self.below else ms <= self.ms
        return seq < self.seq if self.exclusive else seq <= self.seq


OPEN: None = None


def parse_bound(text: str) -> Bound | None:
    """A range bound: None for "-" or "+" (that end open), else an id or "(" + id."""
    if text in ("-", "+"):
        return OPEN
    exclusive = text.startswith("(")
    raw = text[1:] if exclusive else text
    ms, dash, seq = raw.partition("-")
    try:
        number = int(seq) if dash else None
        # Sequences start at 1: "<ms>-0" (Redis's first id of a millisecond) is a time.
        if number == 0:
            return Bound(int(ms), None, exclusive, below=True)
        return Bound(int(ms), number, exclusive)
    except ValueError:
        raise ValueError(f"{text!r} is not an entry id, '-', '+' or '(' and an id") from None


def ms_of(time: dt.datetime | None) -> int:
    """Milliseconds since the epoch, exactly (no float rounding)."""
    return 0 if time is None else (time - _EPOCH) // _MS


def _id_of(msg: RawStreamMsg) -> str:
    """A message's entry id: ``<stored at, ms>-<stream sequence>``."""
    return entry_id(ms_of(msg.time), msg.seq or 0)


def _order(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


class JetStreamReads:
    """The reads of ``OperatorStore`` on one JetStream engine (sharing its connection)."""

    kind = "jetstream"

    def __init__(self, engine: JetStreamEngine) -> None:
        self.engine = engine
        self.connection = engine.connection
        self.names = engine.names
        self.keyspace = engine.keyspace

    async def ping(self) -> None:
        """A round trip to the server (connecting first if this engine never did)."""
        nc = await self.connection.client()
        if not nc.is_connected:
            raise ConnectionError(f"not connected to NATS at {self.connection.url}")
        await nc.flush(timeout=PING_TIMEOUT_S)

    # --- logs -------------------------------------------------------------------------

    def _stream(self, key: str) -> str | None:
        try:
            return self.names.stream_of(key)
        except ValueError:
            return None

    def _fields(self, stream: str, key: str, entry: str, data: bytes) -> dict[bytes, bytes]:
        """A stored message as the fields its log's entries have (see the module doc)."""
        if stream == self.names.dlq_stream:
            return decode_letter(entry, data).fields()
        if stream == self.names.ops_stream:
            if key == self.keyspace.state_repairs():
                return {b"record": data}
            try:
                loaded = orjson.loads(data)
            except orjson.JSONDecodeError:
                loaded = None
            if not isinstance(loaded, dict):  # not an entry this system wrote
                return {b"body": data}
            return {str(k).encode(): str(v).encode() for k, v in loaded.items()}
        return {b"envelope": data}

    def _entry(self, stream: str, key: str, ms: int, seq: int, data: bytes) -> Entry:
        entry = entry_id(ms, seq)
        return entry, self._fields(stream, key, entry, data)

    async def range(
        self, key: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        """Entries from ``start`` to ``end``, oldest first, through a short-lived consumer
        (one per call)."""
        stream = self._stream(key)
        if stream is None or start == "+" or end == "-" or count == 0:
            return []
        found = await self._read(stream, key, parse_bound(start), parse_bound(end), count)
        return [self._entry(stream, key, ms, seq, data) for ms, seq, data in found]

    async def range_reverse(
        self, key: str, end: str = "+", start: str = "-", count: int | None = None
    ) -> list[Entry]:
        """Entries from ``end`` down to ``start``, newest first.

        JetStream reads forward only. The newest entry is one lookup; for more, this reads
        the window of ``TAIL_WINDOW * count`` sequences before the end, then windows eight
        times wider until it holds ``count`` entries or reaches ``start``: a subject that
        holds a small share of its stream costs several reads, and without ``count`` the
        whole range is read."""
        stream = self._stream(key)
        if stream is None or start == "+" or end == "-" or count == 0:
            return []
        low, high = parse_bound(start), parse_bound(end)
        if count is None or (high is not None and high.seq is None):
            found = await self._read(stream, key, low, high, None)
            return [self._entry(stream, key, *item) for item in reversed(found)][: count or None]
        last = await self._last(stream, key)
        if last is None:
            return []
        top = last.seq or 0
        if high is not None and high.seq is not None:
            top = min(top, high.seq - 1 if high.exclusive else high.seq)
        if count == 1 and top == last.seq:
            newest = (ms_of(last.time), top, last.data or b"")
            if low is not None and not low.admits_from(newest[0], newest[1]):
                return []
            return [self._entry(stream, key, *newest)]
        floor = 1
        if low is not None and low.seq is not None:
            floor = max(1, low.seq + 1 if low.exclusive else low.seq)
        window = TAIL_WINDOW * count
        while True:
            first = max(floor, top - window + 1)
            found = await self._read(
                stream, key, Bound(0, first, False), Bound(0, top, False), None
            )
            kept = found if low is None else [x for x in found if low.admits_from(x[0], x[1])]
            if first <= floor or len(kept) < len(found) or len(kept) >= count:
                return [self._entry(stream, key, *item) for item in reversed(kept[-count:])]
            window *= 8

    async def newest(self, key: str) -> Entry | None:
        tail = await self._tail(key)
        if tail is None:
            return None
        stream, last = tail
        return self._entry(stream, key, ms_of(last.time), last.seq or 0, last.data or b"")

    async def last_entry_ids(self, keys: Sequence[str]) -> dict[str, str]:
        async def last_id(key: str) -> str:
            tail = await self._tail(key)
            return "0-0" if tail is None else _id_of(tail[1])

        ids = await asyncio.gather(*(last_id(key) for key in keys))
        return dict(zip(keys, ids, strict=True))

    async def entries_by_id(
        self, key: str, entry_ids: Sequence[str]
    ) -> list[dict[bytes, bytes] | None]:
        """Each entry looked up by its sequence; None where that sequence holds no message
        of this subject."""
        stream = self._stream(key)
        if stream is None:
            return [None] * len(entry_ids)
        js = await self.connection.jetstream()

        async def one(entry: str) -> dict[bytes, bytes] | None:
            _, dash, seq = entry.partition("-")
            if not dash or not seq.isdigit() or int(seq) < 1:
                return None
            try:
                msg = await js.get_msg(stream, int(seq))
            except NotFoundError:
                return None
            if msg.subject != key:
                return None
            return self._fields(stream, key, entry, msg.data or b"")

        return list(await asyncio.gather(*(one(entry) for entry in entry_ids)))

    async def read_after(
        self, last_ids: Mapping[str, str], count: int, block_ms: int | None
    ) -> list[tuple[str, list[Entry]]]:
        """New entries of several subjects after ``last_ids``, looking again every
        ``POLL_S`` until some come or ``block_ms`` passed (None or 0: once).

        An idle poll costs one stream-info call per stream: a subject is looked at (one
        message lookup) only once its stream's last sequence passed what was seen of it.
        ``$`` means after the subject's current end; an id of a time only, after the last
        entry stored before that time."""
        js = await self.connection.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (block_ms or 0) / 1000
        after: dict[str, int] = {}  # subject -> the sequence the entries come after
        seen: dict[str, int] = {}  # subject -> its stream's last sequence when looked at
        streams: dict[str, str] = {}
        for key, last in last_ids.items():
            stream = self._stream(key)
            if stream is None:
                continue
            streams[key] = stream
            after[key] = await self._after_seq(js, stream, key, last)
            seen[key] = after[key]
        while True:
            tops = await self._last_seqs(js, set(streams.values()))
            found: list[tuple[str, list[Entry]]] = []
            for key, stream in streams.items():
                top = tops.get(stream, 0)
                if top <= seen[key]:
                    continue
                seen[key] = top
                try:
                    first = await js.get_msg(stream, after[key] + 1, subject=key, next=True)
                except NotFoundError:
                    continue
                start = Bound(0, first.seq or 0, exclusive=False)
                items = await self._read(stream, key, start, None, count)
                if items:
                    found.append((key, [self._entry(stream, key, *item) for item in items]))
            if found or not block_ms or loop.time() >= deadline:
                found.sort(key=lambda item: _order(item[1][0][0]))
                return found
            await asyncio.sleep(min(POLL_S, max(0.0, deadline - loop.time())))

    async def stream_counters(self, key: str) -> tuple[str, int] | None:
        """The subject's last id and the messages it holds now: JetStream keeps no count of
        the messages ever appended to a subject, so once the subject was trimmed this is
        less than Redis's entries-added. None when the subject holds nothing."""
        tail = await self._tail(key)
        if tail is None:
            return None
        stream, last = tail
        js = await self.connection.jetstream()
        try:
            info = await js.stream_info(stream, subjects_filter=key)
        except NotFoundError:
            return None
        held = (info.state.subjects or {}).get(key, 0)
        return _id_of(last), held

    async def appended_since(self, key: str, last_id: str, counted: int) -> int:
        """The messages the subject holds past the position's sequence (JetStream keeps no
        count of messages ever appended to a subject): exact unless more were appended
        since than the subject keeps."""
        stream = self._stream(key)
        if stream is None:
            return 0
        _, _, seq = last_id.partition("-")
        after = int(seq) if seq.isdigit() else 0
        return await self._count_from(stream, key, after + 1)

    # --- consumers ----------------------------------------------------------------------

    async def groups_each(self, keys: Sequence[str]) -> list[list[GroupFigures] | None]:
        """Per subject, each group reading it: its newest consumer there (see the module
        doc). ``consumers`` is 1 once an owner positioned the group, 0 while only the
        placeholder holds it; ``lag`` the consumer's undelivered messages. None for a
        subject that holds no message and no group."""
        js = await self.connection.jetstream()
        groups = await self._groups(js)
        held = await self._held(js, [key for key in keys if self._stream(key) is not None])
        out: list[list[GroupFigures] | None] = []
        for key in keys:
            stream = self._stream(key)
            mine = groups.get(key, {})
            if stream is None or (not mine and not held.get(key)):
                out.append(None)
                continue
            figures = []
            for group, (lease, info) in sorted(mine.items()):
                delivered = await self._delivered_id(js, stream, key, info)
                figures.append(
                    GroupFigures(
                        name=group,
                        consumers=1 if lease > 0 else 0,
                        pending=info.num_ack_pending or 0,
                        lag=info.num_pending or 0,
                        last_delivered_id=delivered,
                    )
                )
            out.append(figures)
        return out

    async def read_positions(self, key: str) -> tuple[str, list[GroupProgress]] | None:
        """The subject's last id and, per group, the id of the last message its consumer
        delivered (the last id itself once it has nothing left to deliver) and how many it
        holds unacknowledged; None when the subject holds nothing."""
        tail = await self._tail(key)
        if tail is None:
            return None
        stream, last = tail
        js = await self.connection.jetstream()
        last_id = _id_of(last)
        groups = (await self._groups(js)).get(key, {}) if stream == self.names.events_stream else {}
        positions = [
            GroupProgress(
                group,
                await self._delivered_id(js, stream, key, info, last),
                info.num_ack_pending or 0,
            )
            for group, (_, info) in sorted(groups.items())
        ]
        return last_id, positions

    async def heartbeats_each(self, domains: Sequence[str]) -> list[list[int]]:
        """Each domain's consumers' last beats, from the KV keys ``names.heartbeat_key``."""
        kv = await self.connection.kv()
        js = await self.connection.jetstream()
        bucket = self.names.bucket
        prefix = f"$KV.{bucket}."
        try:
            info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}beat.>")
        except NotFoundError:
            return [[] for _ in domains]
        keys = [subject.removeprefix(prefix) for subject in info.state.subjects or {}]

        async def beat(key: str) -> int | None:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return None
            try:
                return int(entry.value or b"0")
            except ValueError:
                return None

        out: list[list[int]] = []
        for domain in domains:
            mine = [key for key in keys if key.startswith(f"beat.{token(domain)}.")]
            beats = await asyncio.gather(*(beat(key) for key in sorted(mine)))
            out.append([at for at in beats if at is not None])
        return out

    # --- traces -------------------------------------------------------------------------

    async def trace_items(self, trace_id: str) -> list[bytes]:
        """The envelopes stored on the trace's subject, oldest first (an event indexed twice
        by a retried commit past the duplicate window shows twice, as on Redis)."""
        found = await self._read(
            self.names.trace_stream, self.names.trace(trace_id), None, None, None
        )
        return [data for _, _, data in found]

    # --- helpers ------------------------------------------------------------------------

    async def _tail(self, key: str) -> tuple[str, RawStreamMsg] | None:
        """The subject's stream and its last message; None when it has neither."""
        stream = self._stream(key)
        if stream is None:
            return None
        last = await self._last(stream, key)
        return None if last is None else (stream, last)

    async def _last(self, stream: str, subject: str) -> RawStreamMsg | None:
        js = await self.connection.jetstream()
        try:
            return await js.get_last_msg(stream, subject)
        except NotFoundError:  # no such stream, or no message on the subject
            return None

    async def _read(
        self,
        stream: str,
        subject: str,
        start: Bound | None,
        end: Bound | None,
        count: int | None,
    ) -> list[tuple[int, int, bytes]]:
        """(ms, seq, data) of the subject's messages from ``start`` to ``end`` (up to
        ``count``), through a consumer of its own that acknowledges nothing, deleted after."""
        if (
            end is not None
            and end.seq is not None
            and start is not None
            and start.seq is not None
            and end.seq - end.exclusive < start.seq + start.exclusive
        ):
            return []
        if start is None or (start.seq or start.ms) <= 0:
            policy, first_seq, since = DeliverPolicy.ALL, None, None
        elif start.seq is None:
            since = _EPOCH + start.ms * _MS
            policy, first_seq = DeliverPolicy.BY_START_TIME, None
        else:
            policy, since = DeliverPolicy.BY_START_SEQUENCE, None
            first_seq = max(1, start.seq + (1 if start.exclusive else 0))
        js = await self.connection.jetstream()
        try:
            pull = await js.pull_subscribe(
                subject,
                stream=stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=policy,
                    opt_start_seq=first_seq,
                    opt_start_time=since,
                    inactive_threshold=30.0,
                    mem_storage=True,
                ),
            )
        except NotFoundError:  # no such stream yet
            return []
        out: list[tuple[int, int, bytes]] = []
        name = ""
        try:
            info = await pull.consumer_info()
            name = info.name
            wanted = info.num_pending or 0
            if count is not None:
                wanted = min(wanted, count)
            taken = 0
            while len(out) < wanted and taken < (info.num_pending or 0):
                try:
                    batch = await pull.fetch(min(READ_BATCH, wanted - len(out)), READ_WAIT_S)
                except TimeoutError:
                    break
                for msg in batch:
                    taken += 1
                    ms, seq = _stored_at(msg.reply)
                    if start is not None and not start.admits_from(ms, seq):
                        continue
                    if end is not None and not end.admits_to(ms, seq):
                        return out
                    out.append((ms, seq, msg.data))
                    if len(out) >= wanted:
                        break
        finally:
            with contextlib.suppress(Exception):
                await pull.unsubscribe()
            if name:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(stream, name)
        return out

    async def _count_from(self, stream: str, subject: str, first_seq: int) -> int:
        """How many messages of the subject the stream holds from ``first_seq`` on: the
        pending count of a consumer of its own (acknowledging nothing), deleted after."""
        js = await self.connection.jetstream()
        try:
            pull = await js.pull_subscribe(
                subject,
                stream=stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=max(1, first_seq),
                    inactive_threshold=30.0,
                    mem_storage=True,
                ),
            )
        except NotFoundError:  # no such stream yet
            return 0
        name = ""
        try:
            info = await pull.consumer_info()
            name = info.name
            return info.num_pending or 0
        finally:
            with contextlib.suppress(Exception):
                await pull.unsubscribe()
            if name:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(stream, name)

    async def _after_seq(self, js: JetStreamContext, stream: str, key: str, last: str) -> int:
        """The sequence ``read_after`` reads after, for the id it was given."""
        if last == "$":
            tops = await self._last_seqs(js, {stream})
            return tops.get(stream, 0)
        bound = parse_bound(last)
        if bound is None or bound.seq is not None:
            return 0 if bound is None or bound.seq is None else bound.seq
        if bound.ms <= 0:
            return 0
        later = await self._read(stream, key, bound, None, 1)
        if later:
            return later[0][1] - 1
        return (await self._last_seqs(js, {stream})).get(stream, 0)

    async def _last_seqs(self, js: JetStreamContext, streams: set[str]) -> dict[str, int]:
        async def top(stream: str) -> int:
            try:
                return (await js.stream_info(stream)).state.last_seq
            except NotFoundError:
                return 0

        names = sorted(streams)
        return dict(zip(names, await asyncio.gather(*map(top, names)), strict=True))

    async def _held(self, js: JetStreamContext, keys: Sequence[str]) -> dict[str, int]:
        """How many messages each subject holds (0 for a subject or stream not there)."""
        by_stream: dict[str, list[str]] = {}
        for key in keys:
            stream = self._stream(key)
            if stream is not None:
                by_stream.setdefault(stream, []).append(key)
        held: dict[str, int] = {}
        for stream, mine in by_stream.items():
            filter_ = mine[0] if len(mine) == 1 else f"{mine[0].split('.', 1)[0]}.>"
            try:
                info = await js.stream_info(stream, subjects_filter=filter_)
            except NotFoundError:
                continue
            subjects = info.state.subjects or {}
            held.update({key: subjects.get(key, 0) for key in mine})
        return held

    async def _groups(self, js: JetStreamContext) -> dict[str, dict[str, tuple[int, ConsumerInfo]]]:
        """subject -> group -> (lease token, info) of the group's newest consumer there."""
        stream = self.names.events_stream
        consumers: list[ConsumerInfo] = []
        try:
            while True:
                page = await js.consumers_info(stream, offset=len(consumers))
                consumers += page
                if len(page) < 256:
                    break
        except NotFoundError:
            return {}
        newest: dict[tuple[str, str], tuple[int, int, ConsumerInfo]] = {}
        for info in consumers:
            parts = split_consumer(info.name)
            if parts is None:
                continue
            group, subject, lease, generation = parts
            held = newest.get((group, subject))
            if held is None or (lease, generation) > held[:2]:
                newest[(group, subject)] = (lease, generation, info)
        out: dict[str, dict[str, tuple[int, ConsumerInfo]]] = {}
        for (group, subject), (lease, _, info) in newest.items():
            out.setdefault(subject, {})[group] = (lease, info)
        return out

    async def _delivered_id(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        info: ConsumerInfo,
        last: RawStreamMsg | None = None,
    ) -> str:
        """The id of the last message the consumer delivered: the subject's last id once it
        has nothing left to deliver (ids compare with it), "0-0" before its first."""
        seq = (info.delivered.stream_seq if info.delivered else 0) or 0
        if last is None and not info.num_pending:
            last = await self._last(stream, subject)
        if last is not None and (not info.num_pending or seq >= (last.seq or 0)):
            return _id_of(last)
        if seq < 1:
            return "0-0"
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:  # trimmed since: its time is unknown, its place is not
            return entry_id(0, seq)
        return entry_id(ms_of(msg.time), seq)


def _stored_at(reply: str) -> tuple[int, int]:
    """(ms, stream sequence) from a delivered message's acknowledgement subject."""
    parts = reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or with a domain
    # and account hash after "ACK" (newer servers): 12 tokens or more.
    at = 2 if len(parts) == 9 else 4
    if not reply.startswith(_ACK_PREFIX):
        raise ValueError(f"not a JetStream delivery: reply subject {reply!r}")
    return int(parts[at + 5]) // 1_000_000, int(parts[at + 3])
