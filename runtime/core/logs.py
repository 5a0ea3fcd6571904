"""Structured logging through structlog, with the trace context on every line.

Two renderings of the same lines: JSON (one object a line, for collectors and files) and a
readable console form (structlog's ConsoleRenderer) for a person at a terminal. ``auto``
picks the console form when the stream is a terminal, JSON otherwise.

Every line written inside a trace context carries ``trace_id`` and ``span_id``; the caller
passes nothing, because a processor reads them from the context variables of ``tracing``.
Every line is also counted per level (``quantum_log_lines_total``), so a burst of warnings
shows on a dashboard before anyone reads the log.
"""

from __future__ import annotations

import argparse
import enum
import logging
import sys
from typing import Any, BinaryIO, cast

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from runtime.core import tracing
from runtime.core.metrics import runtime_metrics

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class LogFormat(enum.StrEnum):
    """How lines are rendered: ``auto`` is console on a terminal, JSON otherwise."""

    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


def add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add the current trace and span ids, unless the line already names them."""
    ctx = tracing.current()
    if ctx is not None:
        event_dict.setdefault("trace_id", ctx.trace_id)
        event_dict.setdefault("span_id", ctx.span_id)
    return event_dict


def count_line(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Count the line per level; runs after the level filter, so only written lines count."""
    runtime_metrics().log_lines.inc(str(event_dict.get("level", "unknown")))
    return event_dict


def _orjson_dumps(value: Any, **_kw: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str)


def _to_bytes(_logger: WrappedLogger, _method: str, line: EventDict) -> bytes:
    # The console renderer hands on text (typed as the event dict it replaced); the logger
    # writes bytes, as the JSON renderer's.
    return cast(str, line).encode("utf-8", "replace")


def level_number(level: str | int) -> int:
    """The logging level of ``level`` ("info", "DEBUG", 20); ValueError when unknown."""
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}; use {', '.join(LEVELS)}")
    return number


def resolve_format(log_format: LogFormat | str, stream: BinaryIO) -> LogFormat:
    """The concrete format: ``auto`` becomes console on a terminal, JSON otherwise."""
    chosen = LogFormat(log_format)
    if chosen is not LogFormat.AUTO:
        return chosen
    try:
        return LogFormat.CONSOLE if stream.isatty() else LogFormat.JSON
    except (AttributeError, ValueError):  # a closed or unusual stream: machines read it
        return LogFormat.JSON


def configure_logging(
    level: str | int = "INFO",
    stream: BinaryIO | None = None,
    log_format: LogFormat | str = LogFormat.JSON,
) -> LogFormat:
    """Send lines at ``level`` and above to ``stream`` (default: standard error's bytes).

    Standard error keeps standard output free for what a command prints for people.
    Returns the format chosen (``auto`` resolved).
    """
    number = level_number(level)
    target = stream or sys.stderr.buffer
    chosen = resolve_format(log_format, target)
    renderer: list[Processor]
    if chosen is LogFormat.CONSOLE:
        colors = bool(getattr(target, "isatty", lambda: False)())
        renderer = [structlog.dev.ConsoleRenderer(colors=colors), _to_bytes]
    else:
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            count_line,
            add_trace_context,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            *renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.BytesLoggerFactory(target),
        cache_logger_on_first_use=False,
    )
    return chosen


def _level_arg(value: str) -> str:
    if value.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {value!r}; choose from {', '.join(LEVELS)} (any case)"
        )
    return value.upper()


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, the same for every command that logs."""
    parser.add_argument(
        "--log-level",
        type=_level_arg,
        default="INFO",
        metavar="LEVEL",
        help=f"lowest level written: {', '.join(LEVELS)} (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=[each.value for each in LogFormat],
        default=LogFormat.AUTO.value,
        help="auto: readable lines on a terminal, JSON lines otherwise (default); "
        "json: always JSON lines; console: always readable lines",
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger that names its component in every line."""
    # Initial values, not .bind(): binding would build the logger now, with the configuration
    # of import time; the lazy proxy picks up configure_logging later. ('logger' is reserved.)
    logger: FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger
