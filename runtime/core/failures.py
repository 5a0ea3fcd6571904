"""Which failures are worth retrying: one rule, used by the delivery loop and everything else.

A *permanent* failure can never succeed however often the entry is delivered again: the entry
does not decode, names an unknown type, fails validation at a domain's door, or makes a
handler's arithmetic blow up on bad input. It goes to the dead-letter stream at once, with a
reason, and the domain goes on; retrying it would only hold the domain up. Everything else a
handler raises is *transient* (a dependency away, a timeout) and is retried with backoff up to
``max_deliveries``.

Errors live in their own module so that envelope, actor and domain code can raise them without
importing the delivery loop.
"""

from __future__ import annotations

from typing import ClassVar

from runtime.core.dead_letters import Reason


class PermanentFailure(Exception):
    """A failure that no retry can fix; ``reason`` is the dead-letter reason recorded."""

    reason: ClassVar[Reason] = "invalid"


class InvalidEvent(PermanentFailure, ValueError):
    """An event that fails validation at a domain's door: it changes nothing and is
    dead-lettered at once with reason ``invalid``.

    ``field`` names the offending field (``fill.quantity``), ``rule`` what it broke
    (``must be finite and > 0``), so the dead letter tells an operator what to fix.
    """

    reason: ClassVar[Reason] = "invalid"

    def __init__(self, field: str, rule: str, value: object = None) -> None:
        self.field = field
        self.rule = rule
        self.value = value
        shown = "" if value is None else f" (got {_short(value)})"
        super().__init__(f"{field}: {rule}{shown}")


def is_permanent(exc: BaseException) -> bool:
    """True when delivering the same entry again cannot succeed.

    Arithmetic errors (``decimal.InvalidOperation``, ``OverflowError``, ``ZeroDivisionError``)
    count as permanent: a handler's arithmetic is deterministic, so the same input fails again.
    """
    return isinstance(exc, PermanentFailure | ArithmeticError)


def reason_of(exc: BaseException) -> Reason:
    """The dead-letter reason of a permanent failure (``invalid`` when it names none)."""
    if isinstance(exc, PermanentFailure):
        return exc.reason
    return "invalid"


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
