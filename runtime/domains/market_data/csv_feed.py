"""A recorded feed: ticks read from a CSV file with the columns time, symbol, price, volume.

``time`` is ISO 8601 (a time without zone is taken as UTC) or seconds since the epoch.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from quantum.events.v1.market_pb2 import MarketTick

from runtime.core import event_checks
from runtime.core.decimals import DecimalError, canonical, parse_decimal
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
                if not symbol.isascii() or not event_checks.is_symbol(symbol):
                    raise CsvFeedError(
                        f"{self.path}:{line}: symbol {symbol!r:.80} is not 1-64 ASCII letters, "
                        "digits or '._:/-'"
                    )
                at = _parse_time(row["time"], self.path, line)
                price = _parse_decimal(row["price"], "price", self.path, line, above=Decimal(0))
                volume = _parse_decimal(
                    row["volume"], "volume", self.path, line, minimum=Decimal(0)
                )
                sequences[symbol] = sequences.get(symbol, 0) + 1
                yield MarketTick(
                    symbol=symbol,
                    price=canonical(price),
                    volume=canonical(volume),
                    observed_at=timestamp(at),
                    sequence=sequences[symbol],
                    source=self.source,
                )


def _parse_time(text: str | None, path: Path, line: int) -> datetime:
    raw = (text or "").strip(" ")
    try:
        seconds = parse_decimal(raw, "time")
    except DecimalError:
        seconds = None
    if seconds is not None:
        if not 0 <= seconds < Decimal(int(event_checks.LATEST.timestamp())):
            raise CsvFeedError(
                f"{path}:{line}: time {raw!r:.80} is outside {event_checks.EARLIEST.isoformat()} "
                f".. {event_checks.LATEST.isoformat()}"
            )
        at = event_checks.EARLIEST + timedelta(seconds=float(seconds))
    else:
        iso = _iso_time(raw)
        if iso is None:
            raise CsvFeedError(
                f"{path}:{line}: time {raw!r:.80} is neither ISO 8601 nor seconds since the epoch"
            )
        at = iso.replace(tzinfo=UTC) if iso.tzinfo is None else iso.astimezone(UTC)
    if not event_checks.EARLIEST <= at < event_checks.LATEST:
        raise CsvFeedError(
            f"{path}:{line}: time {raw!r:.80} is outside {event_checks.EARLIEST.isoformat()} .. "
            f"{event_checks.LATEST.isoformat()}"
        )
    return at


def _iso_time(raw: str) -> datetime | None:
    if not raw.isascii():
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _parse_decimal(
    text: str | None,
    column: str,
    path: Path,
    line: int,
    *,
    above: Decimal | None = None,
    minimum: Decimal | None = None,
) -> Decimal:
    # Spaces around a cell are CSV layout, not part of the number; inside it they are not.
    raw = (text or "").strip(" ")
    try:
        return parse_decimal(
            raw, column, above=above, minimum=minimum, maximum=event_checks.MAX_QUANTITY
        )
    except DecimalError as exc:
        raise CsvFeedError(f"{path}:{line}: {column} {raw!r:.80} {exc.rule}") from None
