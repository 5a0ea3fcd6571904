"""``python -m bench._micro``: microseconds per call of each step of the hot path, in one
process, no Redis: what the bus benchmark's per-event CPU is made of.

The figures are per event (a batch step's time divided by its events). They locate cost; the
end-to-end benchmarks measure it. A few lines prototype cheaper forms of a step (marked
"alt:") and check that they yield the same bytes.
"""

from __future__ import annotations

import asyncio
import time
import timeit
from collections.abc import Callable
from typing import Any

import hiredis
from google.protobuf.internal import api_implementation
from quantum.events.v1.envelope_pb2 import Envelope

from bench.bus import BenchSink, payload_tick
from runtime.adapters.redis.committer import RedisCommitter
from runtime.adapters.redis.streams import StreamNames
from runtime.core import tracing
from runtime.core.actor import Dispatcher, HandlerContext
from runtime.core.envelope import _now_timestamp, decode_envelope, open_payload, seal, seal_child
from runtime.core.ids import derive_event_id, derive_span_id, new_event_id, new_trace_id
from runtime.core.keys import Keyspace
from runtime.core.registry import default_registry
from runtime.core.transport import Commit, Delivery

BATCH = 1_000
ROWS: list[tuple[str, float]] = []


def measure(label: str, call: Callable[[], Any], per_call_events: int = 1) -> float:
    """Best of 5 repeats, µs per event."""
    number = max(1, 20_000 // per_call_events)
    best = min(timeit.repeat(call, number=number, repeat=5)) / number / per_call_events * 1e6
    ROWS.append((label, best))
    return best


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def main() -> None:
    registry = default_registry()
    tick = payload_tick()
    producer = "market_data"
    envelope = seal(tick, producer=producer, partition_key="BTCUSDT")
    data = envelope.SerializeToString()
    event_id = envelope.event_id
    print(f"protobuf backend: {api_implementation.Type()}; envelope {len(data)} bytes")

    # -- producer: seal and its parts ---------------------------------------------------------
    measure("seal() total", lambda: seal(tick, producer=producer, partition_key="BTCUSDT"))
    measure("  registry.for_message", lambda: registry.for_message(tick))
    measure("  new_event_id", new_event_id)
    measure("  tracing.current", tracing.current)
    measure("  new_trace_id", new_trace_id)
    measure("  derive_span_id (blake2b)", lambda: derive_span_id(event_id))
    measure("  _now_timestamp", _now_timestamp)
    measure("  payload.SerializeToString(det)", lambda: tick.SerializeToString(deterministic=True))
    payload_bytes = tick.SerializeToString(deterministic=True)
    trace_id, span_id, at = new_trace_id(), derive_span_id(event_id), _now_timestamp()
    measure(
        "  Envelope(11 kwargs)",
        lambda: Envelope(
            event_id=event_id,
            event_type="market.tick",
            schema_version=1,
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id="",
            causation_id="",
            occurred_at=at,
            producer=producer,
            partition_key="BTCUSDT",
            payload=payload_bytes,
        ),
    )
    measure("envelope.SerializeToString", envelope.SerializeToString)

    # alt: the envelope's bytes by concatenation, constant fields serialised once.
    head = _field(2, b"market.tick") + bytes([3 << 3, 1])
    tail = _field(9, producer.encode()) + _field(10, b"BTCUSDT")

    def concat_seal() -> bytes:
        eid = new_event_id()
        ns = time.time_ns()
        ts = bytes([8]) + _varint(ns // 1_000_000_000) + bytes([16]) + _varint(ns % 1_000_000_000)
        return b"".join(
            (
                b"\n\x1a",
                eid.encode(),
                head,
                b'"\x20',
                new_trace_id().encode(),
                b"*\x10",
                derive_span_id(eid).encode(),
                b"B",
                bytes([len(ts)]),
                ts,
                tail,
                b"Z",
                _varint(len(payload_bytes)),
                payload_bytes,
            )
        )

    out = concat_seal()
    same = Envelope.FromString(out).SerializeToString() == out
    measure(f"alt: seal to bytes by concatenation (same bytes: {same})", concat_seal)

    # -- producer: publisher and XADD packing ------------------------------------------------
    names = StreamNames(Keyspace("bench"), maxlen=1_000_000)
    measure("StreamNames.xadd (hiredis pack)", lambda: names.xadd("market.tick", data))
    stream, _maxlen = names.of("market.tick")
    prefix = b"".join(
        b"$%d\r\n%b\r\n" % (len(p), p) for p in (b"XADD", stream.encode(), b"*", b"envelope")
    )
    prefix = b"*5\r\n" + prefix
    assert prefix + b"$%d\r\n%s\r\n" % (len(data), data) == names.xadd("market.tick", data)
    measure("alt: XADD by prefix + %-format", lambda: prefix + b"$%d\r\n%s\r\n" % (len(data), data))
    asyncio.run(_publisher_steps(tick))

    # -- consumer ----------------------------------------------------------------------------
    measure("decode_envelope total", lambda: decode_envelope(data))
    measure("  Envelope().ParseFromString", lambda: Envelope().ParseFromString(data))
    measure(
        "  is_trace_id + is_span_id",
        lambda: tracing.is_trace_id(trace_id) and tracing.is_span_id(span_id),
    )
    message = type(tick)
    measure("open_payload", lambda: open_payload(envelope, registry, message))
    measure("HandlerContext(...)", lambda: HandlerContext(envelope, "x", registry, {}))
    measure("enter_event + leave", lambda: tracing.leave(tracing.enter_event(envelope)))
    sink = BenchSink(10**12)
    dispatcher = Dispatcher(sink, registry)
    measure("Dispatcher.dispatch (sink handler)", lambda: dispatcher.dispatch(envelope))
    measure(
        "  sink handler alone",
        lambda: sink.on_tick(tick, HandlerContext(envelope, "x", registry, {})),
    )
    reply = _xreadgroup_reply(data, BATCH)
    measure("hiredis parse XREADGROUP reply", lambda: _parse(reply), BATCH)
    measure(
        "Delivery(...) x batch",
        lambda: [Delivery("s", b"1-1", data, 1) for _ in range(BATCH)],
        BATCH,
    )
    ids = [new_event_id() for _ in range(BATCH)]
    committer = _committer(names)  # _pack only: its client never connects
    commit = Commit()
    for i, eid in enumerate(ids):
        commit.ack(Delivery("bench:stream:market.tick", f"1-{i}".encode(), data, 1))
        commit.processed.append(eid)
    measure("RedisCommitter._pack (acks + marks)", lambda: committer._pack(commit), BATCH)
    measure(
        "seal_child (one output)",
        lambda: seal_child(
            tick, producer="p", partition_key="k", event_id=event_id, cause=envelope
        ),
    )
    measure("  derive_event_id", lambda: derive_event_id(event_id, "p", 0))
    measure(
        "ctx.emit (one output, fresh ctx)",
        lambda: HandlerContext(envelope, "x", registry, {}).emit(tick),
    )

    width = max(len(label) for label, _ in ROWS)
    for label, us in ROWS:
        print(f"{label:<{width}}  {us:7.3f} µs")


async def _publisher_steps(tick: Any) -> None:
    from runtime.core.publisher import Publisher

    class NullLog:
        async def append(self, items: Any) -> list[str]:
            return ["1-1"] * len(items)

        def is_transient(self, exc: BaseException) -> bool:
            return False

        async def close(self) -> None:
            return None

    publisher = Publisher(NullLog(), producer="market_data")
    ticks = [tick] * BATCH

    async def many() -> None:
        await publisher.publish_many(ticks, partition_key="BTCUSDT")

    async def nowait() -> None:
        futures = [publisher.publish_nowait(tick, partition_key="BTCUSDT") for _ in range(BATCH)]
        await futures[-1]

    async def plain() -> None:
        await asyncio.gather(
            *(publisher.publish(tick, partition_key="BTCUSDT") for _ in range(BATCH))
        )

    for label, step in (("publish_many", many), ("publish_nowait", nowait), ("publish", plain)):
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(5):
                await step()
            best = min(best, (time.perf_counter() - started) / 5 / BATCH * 1e6)
        ROWS.append((f"Publisher.{label} to a null log, per event", best))
    await publisher.close()


def _xreadgroup_reply(data: bytes, count: int) -> bytes:
    entry = b"*2\r\n$15\r\n1700000000000-1\r\n*2\r\n$8\r\nenvelope\r\n$%d\r\n%s\r\n" % (
        len(data),
        data,
    )
    stream = b"bench:stream:market.tick"
    return b"*1\r\n*2\r\n$%d\r\n%s\r\n*%d\r\n" % (len(stream), stream, count) + entry * count


def _parse(reply: bytes) -> Any:
    reader = hiredis.Reader()
    reader.feed(reply)
    return reader.gets()


def _committer(names: StreamNames) -> RedisCommitter:
    """A committer for packing only: its client (redis-py connects lazily) is never used."""
    import redis.asyncio as aioredis

    from runtime.adapters.redis.retention import StreamRetention

    client = aioredis.Redis.from_url("redis://127.0.0.1:1")
    keyspace = Keyspace("bench")
    return RedisCommitter(
        client,
        keyspace,
        names,
        StreamRetention(client, None),
        domain="bench_sink",
        group="bench_sink",
        state_key=keyspace.state("bench_sink"),
        lease_key=keyspace.lease("bench_sink"),
        processed_ttl_s=604_800,
    )


if __name__ == "__main__":
    main()
