"""What domains are given instead of the store itself: narrow, typed interfaces.

risk_safety needs only ``PolicyReader``; analytics also needs ``PolicyWriter`` to ask for
DEFENSIVE, REDUCING or HALTED (``changed_by="analytics"``). Tests can hand in any object with
these methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol, runtime_checkable

from runtime.core.policy.history import PolicyChangeRecord
from runtime.core.policy.model import Policy, RiskMode, TradingState
from runtime.core.policy.status import PolicyHealth, PolicyStoreStatus


@runtime_checkable
class PolicyReader(Protocol):
    """Reads the current policy from memory: no I/O, well under a microsecond."""

    def get_policy(self) -> Policy: ...


@runtime_checkable
class PolicyWriter(Protocol):
    """Asks for a mode or trading-state change; compare-and-set when a version is given.

    Raises ``VersionConflict``, ``PolicyValidationError`` or ``PolicyUnavailable``
    (runtime.core.policy.errors). A change to the value already in force writes nothing and
    returns the current policy.
    """

    async def switch_mode(
        self,
        mode: RiskMode,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy: ...

    async def set_trading_state(
        self,
        state: TradingState,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy: ...


class PolicyService(PolicyReader, PolicyWriter, Protocol):
    """The PolicyStore of an engine as its process and the control plane use it: started
    and stopped, watched, its history read, any field changed (each engine's ``policy_store``
    module; ``runtime.engines.open_policy_store`` picks one)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> PolicyHealth: ...

    def status(self) -> PolicyStoreStatus: ...

    @property
    def subscriber_count(self) -> int: ...

    def subscribe(self, *, include_current: bool = True) -> AsyncIterator[Policy]: ...

    async def history(
        self, page_size: int = 50, before_version: int | None = None
    ) -> list[PolicyChangeRecord]: ...

    async def update(
        self,
        changes: Mapping[str, object],
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy: ...
