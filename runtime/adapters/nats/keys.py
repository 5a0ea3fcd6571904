"""The keyspace of a JetStream engine: the names ``runtime.core.keys`` gives, spelt as this
namespace's subjects where the control plane and the composition root name a log (a
topic's events, a domain's dead letters, a trace, the operators' logs), so that code written
against ``Keyspace`` (``runtime.core.operator_store``) reads the right subject. Groups, and
the keys only Redis has, are spelt as ``Keyspace`` spells them.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.adapters.nats.names import JetStreamNames
from runtime.core.keys import Keyspace


@dataclass(frozen=True)
class JetStreamKeyspace(Keyspace):
    @classmethod
    def of(cls, keyspace: Keyspace) -> JetStreamKeyspace:
        return keyspace if isinstance(keyspace, cls) else cls(keyspace.namespace)

    @property
    def names(self) -> JetStreamNames:
        return JetStreamNames(Keyspace(self.namespace))

    def stream(self, event_type: str) -> str:
        return self.names.subject(event_type)

    def dlq(self, domain: str) -> str:
        return self.names.dlq(domain)

    def trace(self, trace_id: str) -> str:
        return self.names.trace(trace_id)

    def state_repairs(self) -> str:
        return self.names.ops("repairs")

    def audit(self) -> str:
        return self.names.ops("audit")
