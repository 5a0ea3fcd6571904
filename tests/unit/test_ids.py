"""Event ids sort by time; derived ids are deterministic."""

from __future__ import annotations

from runtime.core.ids import (
    derive_event_id,
    derive_span_id,
    event_id_time_ms,
    new_event_id,
    new_span_id,
    new_trace_id,
)


def test_event_ids_are_unique_and_sorted_even_within_one_millisecond() -> None:
    ids = [new_event_id(now_ms=1_732_400_000_000) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def test_event_id_carries_its_time() -> None:
    assert event_id_time_ms(new_event_id(now_ms=1_732_400_000_123)) == 1_732_400_000_123


def test_derived_ids_are_deterministic_and_distinct_per_index() -> None:
    cause = new_event_id()
    assert derive_event_id(cause, "risk", 0) == derive_event_id(cause, "risk", 0)
    assert derive_event_id(cause, "risk", 0) != derive_event_id(cause, "risk", 1)
    assert derive_event_id(cause, "risk", 0) != derive_event_id(cause, "exec", 0)
    assert event_id_time_ms(derive_event_id(cause, "risk", 0)) == event_id_time_ms(cause)
    assert derive_span_id(cause) == derive_span_id(cause)


def test_trace_and_span_ids_have_w3c_shape() -> None:
    assert len(new_trace_id()) == 32
    assert len(new_span_id()) == 16
    int(new_trace_id(), 16)
