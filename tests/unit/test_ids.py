"""Event ids sort by time; derived ids are deterministic."""

from __future__ import annotations

import time

from runtime.core.ids import (
    derive_event_id,
    derive_span_id,
    event_id_time_ms,
    new_event_id,
    new_span_id,
    new_trace_id,
)


def test_event_ids_are_unique_and_sorted_even_within_one_millisecond() -> None:
    ids = [new_event_id() for _ in range(5000)]  # thousands per millisecond
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)
    assert len({event_id_time_ms(i) for i in ids}) < len(ids)  # some shared a millisecond


def test_event_id_carries_its_time() -> None:
    before = int(time.time() * 1000)
    made = new_event_id()
    after = int(time.time() * 1000)
    assert before <= event_id_time_ms(made) <= after


def test_a_clock_that_steps_back_never_breaks_the_order() -> None:
    first = new_event_id()
    stepped_back = new_event_id(now_ms=event_id_time_ms(first) - 60_000)
    assert stepped_back > first


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


def test_a_forked_child_draws_ids_of_its_own() -> None:
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids, then leave at once
        os.write(write, (new_trace_id() + new_span_id()).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_trace_id() + new_span_id()
    assert len(child) == 48
