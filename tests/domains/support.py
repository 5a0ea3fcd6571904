"""Test support for the domains: policies, a stub PolicyStore, envelopes and an in-process chain.

The chain delivers each event to every domain that handles it, breadth first, in a fixed
domain order: the same input sequence always yields the same outputs, with no Redis.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from google.protobuf.message import Message
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.actor import Actor, deliver
from runtime.core.envelope import seal
from runtime.core.ids import derive_event_id
from runtime.core.policy import ModeLimits, Policy, RiskMode, TradingState
from runtime.core.tracing import TraceContext

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ROOT_ID = "01KAQ5R1G0" + "0" * 16  # a fixed ULID-shaped id: inputs get derived, stable ids
SYMBOLS = frozenset({"BTC-USD", "ETH-USD", "SOL-USD"})


def limits(**overrides: Any) -> ModeLimits:
    base: dict[str, Any] = {
        "min_confidence": Decimal("0.60"),
        "max_leverage": Decimal("3"),
        "max_position_notional": Decimal("25000"),
        "max_open_positions": 5,
        "risk_per_trade_pct": Decimal("1"),
        "max_daily_loss_pct": Decimal("3"),
        "allowed_symbols": SYMBOLS,
        "max_orders_per_second": 10,
        "max_drawdown_pct": Decimal("10"),
    }
    base.update(overrides)
    return ModeLimits(**base)


DEFENSIVE_LIMITS = limits(
    min_confidence=Decimal("0.75"),
    max_leverage=Decimal("1"),
    max_position_notional=Decimal("10000"),
    max_open_positions=2,
    risk_per_trade_pct=Decimal("0.5"),
    max_daily_loss_pct=Decimal("1.5"),
    max_orders_per_second=5,
    max_drawdown_pct=Decimal("5"),
)


def policy(
    *,
    version: int = 1,
    mode: RiskMode = RiskMode.NORMAL,
    state: TradingState = TradingState.ACTIVE,
    **normal_overrides: Any,
) -> Policy:
    """NORMAL limits (overridable), DEFENSIVE tighter, AGGRESSIVE looser."""
    return Policy(
        version=version,
        mode=mode,
        trading_state=state,
        limits={
            RiskMode.AGGRESSIVE: limits(min_confidence=Decimal("0.5"), max_leverage=Decimal(5)),
            RiskMode.NORMAL: limits(**normal_overrides),
            RiskMode.DEFENSIVE: DEFENSIVE_LIMITS,
        },
    )


class VersionConflict(Exception):
    pass


class StubPolicyStore:
    """An in-memory stand-in for the PolicyStore: versioned, compare-and-set, recording calls."""

    def __init__(self, initial: Policy | None = None) -> None:
        self.policy = initial or policy()
        self.calls: list[tuple[str, str, str, str]] = []  # (what, value, changed_by, reason)

    def get_policy(self) -> Policy:
        return self.policy

    async def switch_mode(
        self, mode: RiskMode, *, expected_version: int | None = None, changed_by: str, reason: str
    ) -> Policy:
        self._check(expected_version)
        self.calls.append(("mode", mode.value, changed_by, reason))
        self.policy = dataclasses.replace(self.policy, version=self.policy.version + 1, mode=mode)
        return self.policy

    async def set_trading_state(
        self,
        state: TradingState,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        self._check(expected_version)
        self.calls.append(("state", state.value, changed_by, reason))
        self.policy = dataclasses.replace(
            self.policy, version=self.policy.version + 1, trading_state=state
        )
        return self.policy

    def _check(self, expected: int | None) -> None:
        if expected is not None and expected != self.policy.version:
            raise VersionConflict(f"expected v{expected}, store is at v{self.policy.version}")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


_counter = 0


def envelope(
    payload: Message,
    *,
    when: datetime | None = None,
    key: str | None = None,
    event_id: str | None = None,
    producer: str = "test",
) -> Envelope:
    """An input envelope with a fresh derived id (or ``event_id``) at event time ``when``."""
    global _counter
    _counter += 1
    return seal(
        payload,
        producer=producer,
        partition_key=key if key is not None else str(getattr(payload, "symbol", "")),
        event_id=event_id or derive_event_id(ROOT_ID, "test-input", _counter),
        occurred_at=when or T0,
        trace=TraceContext(trace_id="a" * 32, span_id="b" * 16),
    )


async def run(actor: Actor, payload: Message, *, when: datetime | None = None) -> list[Message]:
    """Deliver one payload to ``actor``; return the decoded output payloads."""
    from runtime.core.envelope import open_payload

    outputs = await deliver(actor, envelope(payload, when=when))
    return [open_payload(out) for out in outputs]


class Chain:
    """Delivers events to domains in-process, breadth first, in the given domain order."""

    def __init__(self, actors: Sequence[Actor]) -> None:
        self.actors = list(actors)
        self.log: list[Envelope] = []
        self._consumers: dict[str, list[Actor]] = {}
        for actor in self.actors:
            for event_type in type(actor).consumes():
                self._consumers.setdefault(event_type.name, []).append(actor)

    async def publish(self, first: Envelope) -> list[Envelope]:
        queue: deque[Envelope] = deque([first])
        produced: list[Envelope] = []
        while queue:
            event = queue.popleft()
            self.log.append(event)
            for actor in self._consumers.get(event.event_type, []):
                outputs = await deliver(actor, event)
                produced.extend(outputs)
                queue.extend(outputs)
        return produced

    async def publish_all(self, events: Iterable[Envelope]) -> None:
        for event in events:
            await self.publish(event)

    def of_type(self, event_type: str) -> list[Envelope]:
        return [e for e in self.log if e.event_type == event_type]

    def digest(self) -> str:
        """A hash over every event that went through, in order."""
        h = hashlib.sha256()
        for event in self.log:
            h.update(event.SerializeToString(deterministic=True))
        return h.hexdigest()
