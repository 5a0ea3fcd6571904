"""ai_engine: the pluggable signal model; market.tick in, ai.signal.generated out."""

from runtime.domains.ai_engine.ema_crossover import EmaCrossoverModel
from runtime.domains.ai_engine.engine import AiEngine, signal_id_for
from runtime.domains.ai_engine.model import Signal, SignalModel

__all__ = ["AiEngine", "EmaCrossoverModel", "Signal", "SignalModel", "signal_id_for"]
