"""A recorded feed: ticks read from a CSV file with the columns time, symbol, price, volume.

``time`` is ISO 8601 (a time without zone is taken as UTC) or seconds since the epoch.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from quantum.events.v1.market_pb2 import MarketTick

from runtime.core.envelope import timestamp

REQUIRED_COLUMNS = ("time", "symbol", "price", "volume")


class CsvFeedError(ValueError):
    """A recorded feed file that cannot be read; the message names the file and line."""


class CsvFeed:
    """Replays a CSV file as ticks, in file order, with per-symbol sequence numbers."""

    def __init__(self, path: str | Path, *, source: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CsvFeedError(f"feed file {self.path} does not exist or is not a file")
        self.source = source or f"file:{self.path.name}"

    def __iter__(self) -> Iterator[MarketTick]:
        sequences: dict[str, int] = {}
        with self.path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise CsvFeedError(
                    f"{self.path}: missing column(s) {', '.join(missing)}; "
                    f"the header must name {', '.join(REQUIRED_COLUMNS)}"
                )
            for row in reader:
                line = reader.line_num
                symbol = (row["symbol"] or "").strip()
                if not symbol:
                    raise CsvFeedError(f"{self.path}:{line}: empty symbol")
                at = _parse_time(row["time"], self.path, line)
                price = _parse_decimal(row["price"], "price", self.path, line)
                if price <= 0:
                    raise CsvFeedError(f"{self.path}:{line}: price must be > 0, got {price}")
                volume = _parse_decimal(row["volume"], "volume", self.path, line)
                sequences[symbol] = sequences.get(symbol, 0) + 1
                yield MarketTick(
                    symbol=symbol,
                    price=str(price),
                    volume=str(volume),
                    observed_at=timestamp(at),
                    sequence=sequences[symbol],
                    source=self.source,
                )


def _parse_time(text: str | None, path: Path, line: int) -> datetime:
    raw = (text or "").strip()
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise CsvFeedError(
            f"{path}:{line}: time {raw!r} is neither ISO 8601 nor seconds since the epoch"
        ) from exc
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _parse_decimal(text: str | None, column: str, path: Path, line: int) -> Decimal:
    raw = (text or "").strip()
    try:
        value = Decimal(raw)
    except InvalidOperation as exc:
        raise CsvFeedError(f"{path}:{line}: {column} {raw!r} is not a decimal number") from exc
    if not value.is_finite():
        raise CsvFeedError(f"{path}:{line}: {column} {raw!r} is not a finite number")
    return value
