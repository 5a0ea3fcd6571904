"""Identifiers: time-ordered event ids, W3C trace and span ids, and deterministic derivations.

Event ids use the ULID layout (48-bit millisecond time + 80 random bits, Crockford base32,
26 characters), so they sort by time as strings. Ids of a handler's outputs are *derived*
from the input's id instead of drawn at random: a redelivered input then produces outputs
with the same ids, which is what makes effects happen once.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID_LEN = 26
_TIME_CHARS = 10

# Ids need uniqueness, not secrecy: a Mersenne Twister seeded from os.urandom (as the
# OpenTelemetry SDK's id generator does) instead of SystemRandom's system call per id.
# A forked child reseeds, or it would repeat its parent's ids.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


# Two characters per 10 bits: half the steps of a character-at-a-time loop (hot path).
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]


def _encode(value: int, length: int) -> str:
    chars = []
    if length % 2:
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    for _ in range(length // 2):
        chars.append(_PAIRS[value & 1023])
        value >>= 10
    return "".join(reversed(chars))


_prefix_ms = -1
_prefix = ""


def new_event_id(now_ms: int | None = None) -> str:
    """A new unique, time-ordered event id; ids made in one millisecond still sort in order."""
    global _last_ms, _last_rand, _prefix_ms, _prefix
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand += 1
        else:
            _last_ms = ms
            _last_rand = _rng.getrandbits(79)  # headroom so increments never overflow 80 bits
        rand = _last_rand
        if ms != _prefix_ms:  # the time part changes once a millisecond: encoded once
            _prefix_ms, _prefix = ms, _encode(ms, _TIME_CHARS)
        prefix = _prefix
    pairs = _PAIRS
    # The 16 random characters as 8 pairs of 10 bits, most significant first.
    return prefix + "".join(
        [
            pairs[(rand >> 70) & 1023],
            pairs[(rand >> 60) & 1023],
            pairs[(rand >> 50) & 1023],
            pairs[(rand >> 40) & 1023],
            pairs[(rand >> 30) & 1023],
            pairs[(rand >> 20) & 1023],
            pairs[(rand >> 10) & 1023],
            pairs[rand & 1023],
        ]
    )


def event_id_time_ms(event_id: str) -> int:
    """The millisecond timestamp inside an event id."""
    value = 0
    for char in event_id[:_TIME_CHARS]:
        value = value * 32 + _ALPHABET.index(char)
    return value


def derive_event_id(cause_id: str, producer: str, index: int) -> str:
    """The id of output number ``index`` that ``producer`` makes for input ``cause_id``.

    Keeps the cause's time prefix (so ids stay roughly time-ordered) and replaces the random
    part with a hash of (cause, producer, index): the same input always yields the same id.
    """
    digest = hashlib.blake2b(f"{cause_id}|{producer}|{index}".encode(), digest_size=10).digest()
    return cause_id[:_TIME_CHARS] + _encode(int.from_bytes(digest, "big"), _ULID_LEN - _TIME_CHARS)


def new_trace_id() -> str:
    """A random, non-zero W3C trace id (32 lowercase hex characters)."""
    while True:
        value = _rng.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    """A random, non-zero W3C span id (16 lowercase hex characters)."""
    while True:
        value = _rng.getrandbits(64)
        if value:
            return f"{value:016x}"


def derive_span_id(event_id: str) -> str:
    """The span id of the event with this id: deterministic, so a replay yields the same spans."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()
    return digest if digest != _ZERO_SPAN else _ONE_SPAN  # W3C: a span id is never all zero


_ZERO_SPAN = "0" * 16
_ONE_SPAN = "0" * 15 + "1"


def keyed_event_id(at_ms: int, key: str) -> str:
    """A deterministic event id at ``at_ms``: its random part is a hash of ``key``.

    For sources that must give the same events the same ids on every run (a backtest's
    recorded feed: ``key`` names the seed and the row). Sorts by time like ``new_event_id``.
    """
    if not 0 <= at_ms < 1 << 48:
        raise ValueError(f"at_ms must be a millisecond time in [0, 2**48); got {at_ms}")
    digest = hashlib.blake2b(key.encode(), digest_size=10).digest()
    return _encode(at_ms, _TIME_CHARS) + _encode(
        int.from_bytes(digest, "big"), _ULID_LEN - _TIME_CHARS
    )


def keyed_trace_id(key: str) -> str:
    """A deterministic, non-zero W3C trace id (32 lowercase hex characters) from ``key``."""
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "big") or 1
    return f"{value:032x}"
