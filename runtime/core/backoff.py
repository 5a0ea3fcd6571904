"""Capped exponential backoff with jitter, for reconnects and handler retries.

Jitter (a uniform draw in the upper half of the capped exponential) spreads out many clients that
failed at the same moment, so a Redis coming back is not hit by all of them at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of ``base * 2**attempt`` seconds, capped at ``cap``, with jitter."""

    base_s: float = 0.05
    cap_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(
                f"backoff needs 0 < base_s <= cap_s; got base_s={self.base_s}, cap_s={self.cap_s}"
            )

    def ceiling(self, attempt: int) -> float:
        """The largest delay after ``attempt`` failures (0-based)."""
        return float(min(self.cap_s, self.base_s * (2 ** min(max(attempt, 0), 62))))

    def delay(self, attempt: int) -> float:
        """A jittered delay after ``attempt`` failures: between half the ceiling and it.

        Half of the ceiling is kept as a floor so that a retry never comes back at once.
        """
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + self.rng.random() * ceiling / 2
