"""The event registry: event type name <-> payload message class <-> schema version.

The names come from the schema itself (the ``quantum.events.v1.event_type`` message option),
so the proto files stay the single source of truth and no table is kept by hand. The schema
version is the major version of the proto package: ``quantum.events.v2`` carries version 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from types import ModuleType

from google.protobuf.message import Message
from quantum.events.v1 import options_pb2

_PACKAGE_VERSION_RE = re.compile(r"^quantum\.events\.v(\d+)$")
EVENT_PACKAGES = ("quantum.events.v1", "quantum.events.v2")


class UnknownEventType(LookupError):
    """No payload is registered for this event type name."""


class UnknownSchemaVersion(LookupError):
    """The event type is known, but not at this schema version."""


@dataclass(frozen=True, slots=True)
class EventType:
    """One event type at one schema version."""

    name: str
    version: int
    message: type[Message]

    @property
    def full_name(self) -> str:
        """The payload's protobuf full name, for example ``quantum.events.v1.MarketTick``."""
        return str(self.message.DESCRIPTOR.full_name)


class EventRegistry:
    """Maps names and versions to payload classes and back."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, int], EventType] = {}
        self._by_message: dict[type[Message], EventType] = {}

    def register(self, message: type[Message]) -> EventType:
        """Register a payload class that carries the ``event_type`` option."""
        descriptor = message.DESCRIPTOR
        name = descriptor.GetOptions().Extensions[options_pb2.event_type]
        if not name:
            raise ValueError(f"{descriptor.full_name} has no (quantum.events.v1.event_type) option")
        match = _PACKAGE_VERSION_RE.match(descriptor.file.package)
        if match is None:
            raise ValueError(
                f"{descriptor.full_name} is not in a quantum.events.vN package; "
                "its schema version cannot be known"
            )
        event_type = EventType(name=name, version=int(match.group(1)), message=message)
        existing = self._by_key.get((name, event_type.version))
        if existing is not None and existing.message is not message:
            raise ValueError(
                f"event type {name!r} v{event_type.version} is claimed by both "
                f"{existing.full_name} and {event_type.full_name}"
            )
        self._by_key[(name, event_type.version)] = event_type
        self._by_message[message] = event_type
        return event_type

    def register_module(self, module: ModuleType) -> list[EventType]:
        """Register every message of a generated ``_pb2`` module that names an event type."""
        registered = []
        for attribute in vars(module).values():
            if (
                isinstance(attribute, type)
                and issubclass(attribute, Message)
                and attribute.DESCRIPTOR.GetOptions().Extensions[options_pb2.event_type]
            ):
                registered.append(self.register(attribute))
        return registered

    def get(self, name: str, version: int) -> EventType:
        """The event type ``name`` at ``version``; raises a lookup error naming what is known."""
        found = self._by_key.get((name, version))
        if found is not None:
            return found
        versions = sorted(v for (n, v) in self._by_key if n == name)
        if versions:
            raise UnknownSchemaVersion(
                f"event type {name!r} has no schema version {version}; known: {versions}"
            )
        raise UnknownEventType(f"unknown event type {name!r}")

    def latest(self, name: str) -> EventType:
        """The highest registered version of ``name``."""
        versions = [v for (n, v) in self._by_key if n == name]
        if not versions:
            raise UnknownEventType(f"unknown event type {name!r}")
        return self._by_key[(name, max(versions))]

    def for_message(self, message: type[Message] | Message) -> EventType:
        """The event type a payload class (or instance) travels as."""
        cls = message if isinstance(message, type) else type(message)
        found = self._by_message.get(cls)
        if found is None:
            raise UnknownEventType(f"{cls.DESCRIPTOR.full_name} is not a registered event payload")
        return found

    def names(self) -> list[str]:
        """Every registered event type name, sorted."""
        return sorted({name for name, _ in self._by_key})

    def __iter__(self) -> Iterator[EventType]:
        return iter(sorted(self._by_key.values(), key=lambda t: (t.name, t.version)))

    def __len__(self) -> int:
        return len(self._by_key)


def _event_modules(packages: Iterable[str]) -> Iterator[ModuleType]:
    for package_name in packages:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.endswith("_pb2"):
                yield importlib.import_module(f"{package_name}.{info.name}")


@cache
def default_registry() -> EventRegistry:
    """Every event of every released schema version, read from the generated modules."""
    registry = EventRegistry()
    for module in _event_modules(EVENT_PACKAGES):
        registry.register_module(module)
    return registry
