"""Actors: a domain's private state and its handlers, one per event type.

A handler is a method that takes the decoded payload and a ``HandlerContext``, and reacts:

    class RiskSafety(Actor):
        name = "risk_safety"

        @handles
        def on_signal(self, signal: SignalGenerated, ctx: HandlerContext) -> None:
            ctx.emit(SignalApproved(...))

The payload's class — read from the annotation — says which event type the handler takes.
Handlers see no Redis: outputs go out through ``ctx.emit`` and the runtime publishes them,
acknowledges the input, and runs one handler of an actor at a time (no locks in domain code).

Outputs are deterministic: output number *i* of input *e* always gets the same event id and
span id, and carries the input's time, so a redelivered or replayed input yields identical
outputs and downstream consumers can skip what they have already processed.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

from google.protobuf.message import Message
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core import tracing, upcasting
from runtime.core.dead_letters import Reason
from runtime.core.envelope import open_payload, payload_type, seal_child, trace_of
from runtime.core.failures import PermanentFailure
from runtime.core.ids import derive_event_id
from runtime.core.registry import EventRegistry, EventType, default_registry

F = TypeVar("F", bound=Callable[..., Any])

_HANDLER_MARK = "__quantum_handler__"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def handles(method: F) -> F:
    """Mark a method as the handler of the event type its payload annotation names."""
    setattr(method, _HANDLER_MARK, True)
    return method


class HandlerContext:
    """What a handler sees of the world besides its payload, and where its outputs go."""

    __slots__ = ("_outputs", "_trace", "emit_versions", "envelope", "producer", "registry")

    def __init__(
        self,
        envelope: Envelope,
        producer: str,
        registry: EventRegistry | None = None,
        emit_versions: Mapping[str, int] | None = None,
    ) -> None:
        self.envelope = envelope
        self.producer = producer
        self.registry = registry or default_registry()
        # Which schema version each event type goes out as (default: QUANTUM_EMIT_VERSIONS).
        self.emit_versions = (
            upcasting.process_emit_versions() if emit_versions is None else emit_versions
        )
        self._trace: tracing.TraceContext | None = None
        self._outputs: list[Envelope] = []

    @property
    def trace(self) -> tracing.TraceContext:
        """The input event's own span (made on first use: most handlers never ask)."""
        if self._trace is None:
            self._trace = trace_of(self.envelope)
        return self._trace

    @property
    def event_id(self) -> str:
        return self.envelope.event_id

    @property
    def event_type(self) -> str:
        return self.envelope.event_type

    @property
    def partition_key(self) -> str:
        return self.envelope.partition_key

    @property
    def occurred_at(self) -> datetime:
        """The input's event time: the clock domain code reasons with (replays give the same)."""
        at = self.envelope.occurred_at  # in range: checked at decode
        return _EPOCH + timedelta(seconds=at.seconds, microseconds=at.nanos // 1000)

    def emit(
        self,
        payload: Message,
        *,
        partition_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Queue an output event; it is committed with the acknowledgement of the input.

        The payload goes out at the schema version ``emit_versions`` names for its type.
        """
        index = len(self._outputs)
        if self.emit_versions:
            payload = upcasting.for_emission(payload, self.emit_versions)
        cause = self.envelope
        envelope = seal_child(
            payload,
            producer=self.producer,
            partition_key=cause.partition_key if partition_key is None else partition_key,
            event_id=derive_event_id(cause.event_id, self.producer, index),
            cause=cause,
            headers=headers,
            registry=self.registry,
        )
        self._outputs.append(envelope)
        return envelope

    @property
    def outputs(self) -> list[Envelope]:
        """The envelopes emitted so far, in order."""
        return list(self._outputs)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One handler of an actor class: the method and the event type it takes."""

    method_name: str
    message: type[Message]
    is_async: bool


class Actor:
    """Base of every domain. Subclasses set ``name`` and define ``@handles`` methods.

    State lives in plain attributes. A domain that must keep its state across restarts
    overrides ``snapshot_state``/``restore_state``; the runtime stores the snapshot with the
    acknowledgement of the inputs that produced it.
    """

    name: ClassVar[str] = ""
    # Event type -> schema version this actor emits; None: the process's QUANTUM_EMIT_VERSIONS.
    emit_versions: Mapping[str, int] | None = None
    _handler_specs: ClassVar[dict[type[Message], HandlerSpec]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[type[Message], HandlerSpec] = {}
        for klass in reversed(cls.__mro__):
            for attr_name, attr in vars(klass).items():
                if callable(attr) and getattr(attr, _HANDLER_MARK, False):
                    message = _payload_class(klass, attr)
                    if message in specs and specs[message].method_name != attr_name:
                        raise TypeError(
                            f"{cls.__name__} has two handlers for {message.DESCRIPTOR.full_name}:"
                            f" {specs[message].method_name} and {attr_name}"
                        )
                    specs[message] = HandlerSpec(
                        attr_name, message, inspect.iscoroutinefunction(attr)
                    )
        cls._handler_specs = specs

    @classmethod
    def handler_specs(cls) -> dict[type[Message], HandlerSpec]:
        return dict(cls._handler_specs)

    @classmethod
    def consumes(cls, registry: EventRegistry | None = None) -> list[EventType]:
        """The event types this actor handles, by name (one consumer group per stream)."""
        reg = registry or default_registry()
        return sorted(
            (reg.for_message(message) for message in cls._handler_specs),
            key=lambda t: t.name,
        )

    def snapshot_state(self) -> bytes | None:
        """The actor's state as bytes, or None when it keeps none worth saving."""
        return None

    def restore_state(self, data: bytes) -> None:
        """Load a snapshot made by ``snapshot_state``."""

    async def on_start(self) -> None:
        """Called once before the first delivery."""

    async def on_stop(self) -> None:
        """Called once after the last delivery."""


def _payload_class(owner: type, method: Callable[..., Any]) -> type[Message]:
    hints = typing.get_type_hints(method, globalns=vars(inspect.getmodule(owner)))
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    if len(params) != 2:
        raise TypeError(
            f"handler {owner.__name__}.{method.__name__} must take (self, payload, ctx)"
        )
    message = hints.get(params[0])
    if not (isinstance(message, type) and issubclass(message, Message)):
        raise TypeError(
            f"handler {owner.__name__}.{method.__name__}: annotate its payload parameter "
            "with a generated event message class"
        )
    return message


class Dispatcher:
    """Runs an actor's handlers: finds the handler of an envelope's type and version once,
    decodes the payload, and calls the handler inside the event's trace.

    ``dispatch`` returns the outputs directly for a sync handler (no await per event) and an
    awaitable of them for an async one. It raises the ``runtime.core.envelope`` errors when
    the payload cannot be opened, ``UnhandledEventType`` when no handler takes it, and
    whatever the handler raises (the delivery loop classifies it).
    """

    __slots__ = ("_actor", "_emit_versions", "_registry", "_routes", "_specs")

    def __init__(self, actor: Actor, registry: EventRegistry | None = None) -> None:
        self._actor = actor
        self._registry = registry or default_registry()
        self._specs = type(actor)._handler_specs
        emit = actor.emit_versions
        self._emit_versions = upcasting.process_emit_versions() if emit is None else emit
        self._routes: dict[tuple[str, int], _Route] = {}

    def dispatch(self, envelope: Envelope) -> list[Envelope] | Awaitable[list[Envelope]]:
        route = self._routes.get((envelope.event_type, envelope.schema_version))
        if route is None:
            route = self._route(envelope)
        payload = open_payload(envelope, self._registry, route.message)
        if route.upcast:
            payload = upcasting.for_handler(payload, self._specs)
        ctx = HandlerContext(envelope, self._actor.name, self._registry, self._emit_versions)
        if route.is_async:
            return self._dispatch_async(route.method, payload, ctx)
        token = tracing.enter_event(envelope)
        try:
            route.method(payload, ctx)
        finally:
            tracing.leave(token)
        return ctx._outputs

    async def _dispatch_async(
        self, method: Callable[..., Any], payload: Message, ctx: HandlerContext
    ) -> list[Envelope]:
        token = tracing.enter_event(ctx.envelope)
        try:
            await method(payload, ctx)
        finally:
            tracing.leave(token)
        return ctx._outputs

    def _route(self, envelope: Envelope) -> _Route:
        event_type = payload_type(envelope, self._registry)
        spec = self._specs.get(event_type.message)
        upcast = False
        if spec is None:  # the actor may take this event type at another schema version
            probe = upcasting.for_handler(event_type.message(), self._specs)
            spec = self._specs.get(type(probe))
            upcast = True
        if spec is None:
            raise UnhandledEventType(
                f"{type(self._actor).__name__} has no handler for {envelope.event_type} "
                f"v{envelope.schema_version}"
            )
        route = _Route(
            event_type.message, getattr(self._actor, spec.method_name), spec.is_async, upcast
        )
        self._routes[(envelope.event_type, envelope.schema_version)] = route
        return route


@dataclass(frozen=True, slots=True)
class _Route:
    message: type[Message]
    method: Callable[..., Any]
    is_async: bool
    upcast: bool


async def deliver(
    actor: Actor,
    envelope: Envelope,
    registry: EventRegistry | None = None,
    payload: Message | None = None,
) -> list[Envelope]:
    """Run the actor's handler for one envelope inside its trace; return the outputs.

    The one-off form of ``Dispatcher`` (replays use it). Raises the ``runtime.core.envelope``
    errors when the entry cannot be opened, and ``UnhandledEventType`` when the actor has no
    handler for it; whatever the handler raises propagates.
    """
    reg = registry or default_registry()
    if payload is None:
        payload = open_payload(envelope, reg)
    spec = type(actor)._handler_specs.get(type(payload))
    if spec is None:  # the actor may take this event type at another schema version
        payload = upcasting.for_handler(payload, type(actor)._handler_specs)
        spec = type(actor)._handler_specs.get(type(payload))
    if spec is None:
        raise UnhandledEventType(
            f"{type(actor).__name__} has no handler for {envelope.event_type} "
            f"v{envelope.schema_version}"
        )
    ctx = HandlerContext(envelope, actor.name, reg, actor.emit_versions)
    with tracing.use(ctx.trace):
        result = getattr(actor, spec.method_name)(payload, ctx)
        if spec.is_async:
            await typing.cast(Awaitable[None], result)
    return ctx.outputs


class UnhandledEventType(PermanentFailure, LookupError):
    """An actor received an event type it has no handler for."""

    reason: ClassVar[Reason] = "unknown_type"
