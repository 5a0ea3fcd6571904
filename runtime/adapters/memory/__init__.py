"""The in-memory engine: the transport interfaces on plain Python structures, in one process.

Deterministic: entry ids count appends, a commit is one synchronous step, and with
``MemoryBroker(logical=True)`` a ``LogicalScheduler`` delivers in event-time and causal order
(``quantum backtest``). Domain tests and backtests use it; it keeps nothing across processes.
"""

from runtime.adapters.memory.broker import MemoryBroker, MemoryBrokerDown, MissingGroup
from runtime.adapters.memory.runner import MemoryBus, MemoryRunner, group_name, state_key
from runtime.adapters.memory.scheduler import LogicalScheduler
from runtime.adapters.memory.subscription import (
    MemoryCommitter,
    MemoryEventLog,
    MemorySubscription,
)

__all__ = [
    "LogicalScheduler",
    "MemoryBroker",
    "MemoryBrokerDown",
    "MemoryBus",
    "MemoryCommitter",
    "MemoryEventLog",
    "MemoryRunner",
    "MemorySubscription",
    "MissingGroup",
    "group_name",
    "state_key",
]
