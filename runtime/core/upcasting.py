"""Moving a payload between schema versions of its event type.

Consumers and producers of one event type may run different schema versions (a mixed fleet
during a migration). Two rules keep domain code free of that:

- a handler is written against one payload class; ``for_handler`` turns whatever version
  arrived into that class, through a chain of single-step *upcasters* (v1 -> v2 -> ...);
- domain code constructs one payload class; ``for_emission`` turns it into the version the
  process is configured to emit (``QUANTUM_EMIT_VERSIONS``), upcasting or *downcasting*
  (v2 -> v1, for producers that must still feed v1 consumers).

Every step goes between adjacent versions of one event type, so adding v3 means adding the
v2 <-> v3 steps only; older versions reach v3 through the chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import TypeVar, cast

from google.protobuf.message import Message

from runtime.core.envelope import UnknownVersionError
from runtime.core.registry import EventRegistry, EventType, UnknownEventType, default_registry

EMIT_VERSIONS_ENV = "QUANTUM_EMIT_VERSIONS"

Source = TypeVar("Source", bound=Message)
Target = TypeVar("Target", bound=Message)


class SchemaConversionError(ValueError):
    """A payload cannot be turned into the wanted version; ``reason`` is a stable code."""

    reason = "unconvertible"


class MissingConverter(SchemaConversionError):
    """No chain of registered steps leads from the payload's version to the wanted one."""


class LossyDowncast(SchemaConversionError):
    """A newer payload holds something the older version cannot express."""


@dataclass(frozen=True, slots=True)
class ConversionStep:
    """One step between adjacent versions of one event type."""

    source: EventType
    target: EventType
    convert: Callable[[Message], Message]


class SchemaConverters:
    """The upcasters and downcasters known to a process, chained step by step."""

    def __init__(self, registry: EventRegistry | None = None) -> None:
        self._registry = registry or default_registry()
        self._steps: dict[type[Message], dict[int, ConversionStep]] = {}

    @property
    def registry(self) -> EventRegistry:
        return self._registry

    def register(
        self, source: type[Source], target: type[Target], convert: Callable[[Source], Target]
    ) -> ConversionStep:
        """Register ``convert`` from ``source`` to ``target``: one event type, adjacent versions."""
        source_type = self._registry.for_message(source)
        target_type = self._registry.for_message(target)
        if source_type.name != target_type.name:
            raise ValueError(
                f"a converter stays within one event type: {source_type.full_name} is "
                f"{source_type.name!r}, {target_type.full_name} is {target_type.name!r}"
            )
        if abs(source_type.version - target_type.version) != 1:
            raise ValueError(
                f"{source_type.name}: register one step between adjacent versions, not "
                f"v{source_type.version} -> v{target_type.version}; the chain does the rest"
            )
        step = ConversionStep(source_type, target_type, cast(Callable[[Message], Message], convert))
        self._steps.setdefault(source, {})[target_type.version] = step
        return step

    def convert(self, payload: Message, version: int) -> Message:
        """``payload`` as its event type's schema ``version`` (the payload itself if already)."""
        current = self._registry.for_message(payload)
        while current.version != version:
            next_version = current.version + (1 if version > current.version else -1)
            step = self._steps.get(current.message, {}).get(next_version)
            if step is None:
                raise MissingConverter(
                    f"{current.name}: no converter from v{current.version} to v{next_version} "
                    f"(on the way to v{version}); register one in runtime.core.upcasting"
                )
            payload = step.convert(payload)
            if type(payload) is not step.target.message:
                raise TypeError(
                    f"converter {current.name} v{current.version} -> v{next_version} returned "
                    f"{type(payload).__name__}, expected {step.target.full_name}"
                )
            current = step.target
        return payload

    def convert_to(self, payload: Message, target: type[Target]) -> Target:
        """``payload`` as an instance of ``target``, another version of the same event type."""
        want = self._registry.for_message(target)
        have = self._registry.for_message(payload)
        if want.name != have.name:
            raise SchemaConversionError(
                f"cannot turn {have.name!r} ({have.full_name}) into {want.name!r} "
                f"({want.full_name}): they are different event types"
            )
        return cast(Target, self.convert(payload, want.version))

    def can_convert(self, name: str, from_version: int, to_version: int) -> bool:
        """Whether a chain of steps leads from one version of ``name`` to another."""
        try:
            current = self._registry.get(name, from_version)
        except LookupError:
            return False
        while current.version != to_version:
            next_version = current.version + (1 if to_version > current.version else -1)
            step = self._steps.get(current.message, {}).get(next_version)
            if step is None:
                return False
            current = step.target
        return True


@cache
def default_converters() -> SchemaConverters:
    """The converters of every released schema version, on the default registry."""
    # Imported here: the conversions import this module for its errors.
    from runtime.core import schema_v2

    converters = SchemaConverters(default_registry())
    schema_v2.register(converters)
    return converters


def for_handler(
    payload: Message,
    handled: Collection[type[Message]],
    converters: SchemaConverters | None = None,
) -> Message:
    """``payload`` as the class a handler in ``handled`` takes for its event type.

    Returns ``payload`` unchanged when a handler takes its exact class, or when no handler
    takes its event type at all (the caller reports that). When handlers take several
    versions of the event type, the highest wins. Raises ``UnknownVersionError`` (reason
    ``unknown_version``) when no chain of converters reaches the handler's version.
    """
    if type(payload) in handled:
        return payload
    conv = converters or default_converters()
    arrived = _event_type_of(conv.registry, type(payload))
    if arrived is None:
        return payload
    candidates = [
        event_type
        for message in handled
        if (event_type := _event_type_of(conv.registry, message)) is not None
        and event_type.name == arrived.name
    ]
    if not candidates:
        return payload
    target = max(candidates, key=lambda t: t.version)
    try:
        return conv.convert(payload, target.version)
    except SchemaConversionError as exc:
        # For this consumer the version is as good as unknown: dead-letter it at once.
        raise UnknownVersionError(
            f"{arrived.name} v{arrived.version} cannot be read by a handler of "
            f"v{target.version}: {exc}"
        ) from exc


def _event_type_of(registry: EventRegistry, message: type[Message]) -> EventType | None:
    try:
        return registry.for_message(message)
    except UnknownEventType:
        return None


def for_emission(
    payload: Message,
    emit_versions: Mapping[str, int],
    converters: SchemaConverters | None = None,
) -> Message:
    """``payload`` as the schema version ``emit_versions`` names for its event type.

    Event types the mapping does not name go out as constructed.
    """
    if not emit_versions:
        return payload
    conv = converters or default_converters()
    event_type = conv.registry.for_message(payload)
    wanted = emit_versions.get(event_type.name)
    if wanted is None or wanted == event_type.version:
        return payload
    return conv.convert(payload, wanted)


def parse_emit_versions(text: str) -> dict[str, int]:
    """Parse ``"ai.signal.generated=1,execution.order.filled=2"`` into a mapping."""
    versions: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, version = item.partition("=")
        name, version = name.strip(), version.strip().lstrip("vV")
        if not sep or not name or not version.isdigit() or int(version) < 1:
            raise ValueError(
                f"{EMIT_VERSIONS_ENV}: {item!r} is not '<event type>=<version>', "
                "for example 'ai.signal.generated=1'"
            )
        versions[name] = int(version)
    return versions


def check_emit_versions(
    emit_versions: Mapping[str, int], converters: SchemaConverters | None = None
) -> None:
    """Fail at start-up, not at the first emit, when a configured version cannot be emitted."""
    conv = converters or default_converters()
    for name, version in emit_versions.items():
        conv.registry.get(name, version)  # raises a lookup error naming what is known
        for event_type in conv.registry:
            if event_type.name == name and not conv.can_convert(name, event_type.version, version):
                raise MissingConverter(
                    f"{EMIT_VERSIONS_ENV} asks for {name} v{version}, but nothing converts "
                    f"v{event_type.version} to it"
                )


@cache
def process_emit_versions() -> Mapping[str, int]:
    """The emission versions of this process, from ``QUANTUM_EMIT_VERSIONS`` (read once)."""
    versions = parse_emit_versions(os.environ.get(EMIT_VERSIONS_ENV, ""))
    check_emit_versions(versions)
    return MappingProxyType(versions)
