"""The figures an operator's dashboard shows that no counter on the hot path holds.

Every 5 seconds (the health cache's period), ``FiguresPoller`` reads the newest
``portfolio.pnl.updated`` from its stream into the ``quantum_portfolio_*`` gauges and
measures the system health (which sets ``quantum_component_health`` per component).
Reading the stream, not hooking the portfolio domain, keeps the domain pure and works the
same when the portfolio runs in another process than this control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal, InvalidOperation

from quantum.events.v1.portfolio_pb2 import PnlUpdated

from control_plane.event_streams import EventStreams
from control_plane.health import SystemHealth
from control_plane.stored_events import ENVELOPE_FIELD, parse_envelope
from runtime.core.delivery import entry_order
from runtime.core.envelope import EnvelopeError, open_payload
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.metrics import PORTFOLIO_FIGURES, RuntimeMetrics, runtime_metrics
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import Partitioning
from runtime.core.registry import EventRegistry

log = get_logger("control_plane.figures")

PNL_EVENT = "portfolio.pnl.updated"
POLL_EVERY_S = 5.0


def _number(text: str) -> float | None:
    """A finite float from a decimal string, or None (the gauge keeps its last value)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return float(value) if value.is_finite() else None


def pnl_figures(pnl: PnlUpdated) -> dict[str, float]:
    """The gauge values of one PnL update, by PORTFOLIO_FIGURES name; bad fields left out."""
    texts = {
        "equity": pnl.equity,
        "peak_equity": pnl.peak_equity,
        "realized_pnl": pnl.realized_pnl,
        "unrealized_pnl": pnl.unrealized_pnl,
        "daily_pnl": pnl.daily_pnl,
        "exposure": pnl.exposure,
        "drawdown_ratio": pnl.drawdown,
    }
    figures = {name: n for name, text in texts.items() if (n := _number(text)) is not None}
    figures["open_positions"] = float(pnl.open_positions)
    assert set(figures) <= set(PORTFOLIO_FIGURES)
    return figures


class FiguresPoller:
    """Keeps the account and health gauges current while the control plane runs."""

    def __init__(
        self,
        store: OperatorStore,
        keyspace: Keyspace,
        registry: EventRegistry,
        system_health: SystemHealth,
        *,
        metrics: RuntimeMetrics | None = None,
        interval_s: float = POLL_EVERY_S,
        partitioning: Partitioning | None = None,
    ) -> None:
        self._store = store
        self._streams = EventStreams(keyspace, registry, partitioning).of_type(PNL_EVENT)
        self._registry = registry
        self._health = system_health
        self._metrics = metrics or runtime_metrics()
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._last_entry = ""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="control-plane-figures")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # Redis lost, say: the health gauges show it; try again
                log.debug("figures_poll_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self._interval_s)

    async def poll_once(self) -> None:
        """Read the newest PnL update and refresh the health once."""
        await self._health.measure()  # sets quantum_component_health as a side effect
        entries = [e for e in [await self._store.newest(s) for s in self._streams] if e]
        if not entries:
            return
        entry_id, fields = max(entries, key=lambda entry: entry_order(entry[0]))
        if entry_id == self._last_entry:
            return
        self._last_entry = entry_id
        envelope = parse_envelope(fields.get(ENVELOPE_FIELD, b""))
        if envelope is None:
            return
        try:
            payload = open_payload(envelope, self._registry)
        except EnvelopeError:
            return
        if not isinstance(payload, PnlUpdated):
            return
        for name, value in pnl_figures(payload).items():
            self._metrics.portfolio[name].set(value=value)
