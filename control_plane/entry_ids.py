"""Strict checks of stream entry ids and numbers taken from requests.

Redis rejects ids whose parts exceed 2**64-1; a loose check (``\\d`` matches Unicode digits,
``$`` accepts a trailing newline) would let such ids through to Redis, and the request would
fail as INTERNAL instead of INVALID_ARGUMENT.
"""

from __future__ import annotations

import re

MAX_ID_PART = 2**64 - 1
_ENTRY_ID_RE = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")


def is_entry_id(value: str, *, sequence_required: bool = False) -> bool:
    """True when ``value`` is an id Redis accepts: ``<ms>`` or ``<ms>-<seq>``, each <= 2**64-1."""
    match = _ENTRY_ID_RE.fullmatch(value)
    if match is None:
        return False
    ms, seq = match.group(1), match.group(2)
    if sequence_required and seq is None:
        return False
    return int(ms) <= MAX_ID_PART and (seq is None or int(seq) <= MAX_ID_PART)


def positive_int(value: str, upper: int) -> int | None:
    """``value`` as an int in 1..upper when it is plain ASCII digits; else None."""
    if not value.isascii() or re.fullmatch(r"[0-9]{1,20}", value) is None:
        return None
    number = int(value)
    return number if 1 <= number <= upper else None


def next_entry_id(entry_id: str) -> str | None:
    """The smallest id after ``entry_id`` (``<ms>-<seq>``), or None after the largest one.

    An exclusive bound ``(<id>`` on the largest id makes Redis answer an error, not an empty
    range; computing the next id keeps paging past the end a plain empty page.
    """
    ms_text, _, seq_text = entry_id.partition("-")
    ms, seq = int(ms_text), int(seq_text or 0)
    if seq < MAX_ID_PART:
        return f"{ms}-{seq + 1}"
    if ms < MAX_ID_PART:
        return f"{ms + 1}-0"
    return None
