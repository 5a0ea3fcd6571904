"""execution: exchange adapters and the paper exchange; approved signals in, orders out."""

from runtime.domains.execution.actor import Execution, order_id_for
from runtime.domains.execution.adapter import ExchangeAdapter, Fill, MarketOrder, Refusal
from runtime.domains.execution.paper import PaperExchange

__all__ = [
    "ExchangeAdapter",
    "Execution",
    "Fill",
    "MarketOrder",
    "PaperExchange",
    "Refusal",
    "order_id_for",
]
