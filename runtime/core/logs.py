"""Structured logging: JSON lines through structlog, with the trace context on every line.

Every line written inside a trace context carries ``trace_id`` and ``span_id``; the caller
passes nothing, because a processor reads them from the context variables of ``tracing``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from runtime.core import tracing


def add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add the current trace and span ids, unless the line already names them."""
    ctx = tracing.current()
    if ctx is not None:
        event_dict.setdefault("trace_id", ctx.trace_id)
        event_dict.setdefault("span_id", ctx.span_id)
    return event_dict


def _orjson_dumps(value: Any, **_kw: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str)


def configure_logging(level: str | int = "INFO", stream: BinaryIO | None = None) -> None:
    """Send JSON lines at ``level`` and above to ``stream`` (default: standard error's bytes).

    Standard error keeps standard output free for what a command prints for people.
    """
    if isinstance(level, str):
        level_number = logging.getLevelNamesMapping().get(level.upper())
        if level_number is None:
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    else:
        level_number = level
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trace_context,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.BytesLoggerFactory(stream or sys.stderr.buffer),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger that names its component in every line."""
    # Initial values, not .bind(): binding would build the logger now, with the configuration
    # of import time; the lazy proxy picks up configure_logging later. ('logger' is reserved.)
    logger: FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger
