"""The ai_engine actor: market.tick in, ai.signal.generated out."""

from __future__ import annotations

import json

from quantum.events.v1.ai_pb2 import SignalGenerated
from quantum.events.v1.market_pb2 import MarketTick

from runtime.core import event_checks as door
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.domains.ai_engine.ema_crossover import EmaCrossoverModel
from runtime.domains.ai_engine.model import SignalModel


def signal_id_for(tick_event_id: str) -> str:
    """The signal id a tick yields: derived from the tick's event id, so replays agree."""
    return f"sig-{tick_event_id}"


class AiEngine(Actor):
    """Feeds every tick to the model and publishes the model's opinions."""

    name = "ai_engine"

    def __init__(self, model: SignalModel | None = None) -> None:
        self.model: SignalModel = model if model is not None else EmaCrossoverModel()
        self.signals_generated = 0

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        door.occurred_at(ctx.envelope)
        door.tick(tick)  # before the model sees it: a bad print must not reach its averages
        signal = self.model.observe(tick)
        if signal is None:
            return
        self.signals_generated += 1
        ctx.emit(
            SignalGenerated(
                signal_id=signal_id_for(ctx.event_id),
                symbol=tick.symbol,
                side=signal.side,
                confidence=f"{signal.confidence:f}",
                model_id=self.model.model_id,
                features={name: f"{value:f}" for name, value in signal.features.items()},
                reference_price=tick.price,
                generated_at=ctx.envelope.occurred_at,
            ),
            partition_key=tick.symbol,
        )

    def snapshot_state(self) -> bytes:
        return json.dumps(
            {"model_id": self.model.model_id, "model": self.model.snapshot()}, sort_keys=True
        ).encode()

    def restore_state(self, data: bytes) -> None:
        state = json.loads(data)
        if state.get("model_id") != self.model.model_id:
            raise ValueError(
                f"ai_engine snapshot was made by model {state.get('model_id')!r}, but the "
                f"engine runs {self.model.model_id!r}; delete the snapshot to start fresh"
            )
        self.model.restore(state["model"])
