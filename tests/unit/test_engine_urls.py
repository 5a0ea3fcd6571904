"""The composition root picks the engine from the URL's scheme (``runtime.engines``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.server import build_parser as control_plane_parser
from runtime.bootstrap import engine_problem
from runtime.cli import build_parser
from runtime.core.keys import Keyspace
from runtime.core.operator_store import OperationUnsupported
from runtime.engines import (
    EngineSettings,
    UnknownEngine,
    engine_kind,
    open_engine,
    open_operator_side,
)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", "redis"),
        ("unix:///tmp/redis.sock", "redis"),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "redis_cluster"),
        ("nats://127.0.0.1:4222", "jetstream"),
        ("tls://nats.example:4222", "jetstream"),
        ("memory://", "memory"),
    ],
)
def test_each_scheme_selects_its_engine(url: str, kind: str) -> None:
    assert engine_kind(url) == kind


def test_an_unknown_scheme_is_refused_with_the_ones_there_are() -> None:
    with pytest.raises(UnknownEngine, match="nats://"):
        engine_kind("kafka://127.0.0.1:9092")


async def test_a_nats_url_opens_the_jetstream_engine_without_connecting_yet() -> None:
    engine = open_engine(
        "nats://127.0.0.1:1", Keyspace("units"), settings=EngineSettings(maxlen=500, retain=20)
    )
    assert engine.kind == "jetstream"
    await engine.close()  # never connected: nothing to close but the object


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "redis+cluster://127.0.0.1:7000", "nats://127.0.0.1:4222", None],
)
def test_quantum_run_takes_every_broker_engine(url: str | None) -> None:
    assert engine_problem(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [("memory://", "quantum backtest"), ("kafka://127.0.0.1:9092", "nats://")],
)
def test_quantum_run_refuses_an_engine_it_cannot_run_on_saying_why(url: str, why: str) -> None:
    problem = engine_problem(url)
    assert problem is not None
    assert why in problem


async def test_the_in_memory_engine_has_no_operator_side_and_says_why() -> None:
    engine = open_engine("memory://", Keyspace("units"))
    with pytest.raises(OperationUnsupported, match="in-memory engine of backtests"):
        open_operator_side("memory://", engine, state_dir=Path("unused"))
    await engine.close()


@pytest.mark.parametrize("flag", ["--engine-url", "--redis-url"])
def test_the_engine_url_has_two_names_on_both_commands(flag: str) -> None:
    url = "nats://127.0.0.1:4222"
    assert build_parser().parse_args(["run", flag, url]).redis_url == url
    assert control_plane_parser().parse_args([flag, url]).redis_url == url
