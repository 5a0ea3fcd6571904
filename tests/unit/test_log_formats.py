"""Log formats: JSON lines for machines, readable lines for people, chosen by flag or terminal."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import orjson
import pytest
import structlog

from runtime.cli import build_parser
from runtime.core import tracing
from runtime.core.logs import LogFormat, configure_logging, get_logger
from runtime.core.metrics import runtime_metrics


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _configure_from_flags(*flags: str, stream: io.BytesIO) -> LogFormat:
    args = build_parser().parse_args(["run", *flags])
    return configure_logging(args.log_level, stream=stream, log_format=args.log_format)


def test_json_format_keeps_trace_and_span_ids() -> None:
    buffer = io.BytesIO()
    assert _configure_from_flags("--log-format", "json", stream=buffer) is LogFormat.JSON
    with tracing.span() as ctx:
        get_logger("test").info("order.checked", symbol="BTC-USD")
    (line,) = [orjson.loads(raw) for raw in buffer.getvalue().splitlines()]
    assert line["event"] == "order.checked"
    assert (line["trace_id"], line["span_id"]) == (ctx.trace_id, ctx.span_id)
    assert line["level"] == "info"


def test_console_flag_gives_readable_lines_with_the_trace_id() -> None:
    buffer = io.BytesIO()
    assert _configure_from_flags("--log-format", "console", stream=buffer) is LogFormat.CONSOLE
    with tracing.span() as ctx:
        get_logger("test").warning("order.checked", symbol="BTC-USD")
    text = buffer.getvalue().decode()
    assert text.count("\n") == 1
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    assert "order.checked" in text
    assert "symbol=BTC-USD" in text
    assert f"trace_id={ctx.trace_id}" in text
    assert "\x1b[" not in text  # not a terminal: no colour codes


def test_auto_is_json_when_not_a_terminal() -> None:
    buffer = io.BytesIO()
    assert _configure_from_flags(stream=buffer) is LogFormat.JSON
    get_logger("test").info("started")
    assert orjson.loads(buffer.getvalue())["event"] == "started"


def test_auto_is_console_on_a_terminal() -> None:
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "wb", buffering=0) as terminal:
        assert configure_logging("INFO", stream=terminal, log_format="auto") is LogFormat.CONSOLE
        get_logger("test").info("started", symbol="ETH-USD")
        written = os.read(primary, 4096).decode()
    os.close(primary)
    assert "started" in written
    assert "ETH-USD" in written
    assert not written.lstrip().startswith("{")


def test_log_level_flag_filters_lower_levels() -> None:
    buffer = io.BytesIO()
    _configure_from_flags("--log-level", "warning", "--log-format", "json", stream=buffer)
    log = get_logger("test")
    log.info("hidden")
    log.warning("shown")
    assert [orjson.loads(raw)["event"] for raw in buffer.getvalue().splitlines()] == ["shown"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--log-format", "xml"], "invalid choice: 'xml' (choose from 'auto', 'json', 'console')"),
        (["--log-level", "loud"], "unknown log level 'loud'; choose from DEBUG, INFO, WARNING"),
    ],
)
def test_bad_log_flags_are_clear_argparse_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_written_lines_are_counted_per_level() -> None:
    counter = runtime_metrics().log_lines
    before = {level: counter.value(level) for level in ("info", "warning", "debug")}
    configure_logging("INFO", stream=io.BytesIO(), log_format="json")
    log = get_logger("test")
    log.info("one")
    log.warning("two")
    log.warning("three")
    log.debug("filtered out, so not counted")
    assert counter.value("info") - before["info"] == 1
    assert counter.value("warning") - before["warning"] == 2
    assert counter.value("debug") == before["debug"]
