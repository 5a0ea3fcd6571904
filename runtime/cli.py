"""``quantum``: the runtime's command line.

    quantum run [--workers N | --domains a,b] [--duration S] [--symbols A,B] [--feed FILE.csv] ...
    quantum control-plane [--grpc-addr HOST:PORT] ...
    quantum backtest --feed FILE.csv [--equity N] [--trades OUT.csv] [--plot OUT.png] ...

Parsing only: the wiring lives in the composition roots, ``runtime.bootstrap`` (run, control
plane) and ``runtime.backtest``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from control_plane.server import add_server_arguments
from runtime.adapters.redis.retention import DEFAULT_BACKPRESSURE_TIMEOUT_S, DEFAULT_RETAIN
from runtime.core.decimals import DecimalError, parse_decimal
from runtime.core.delivery import RunnerConfig
from runtime.core.keys import Keyspace
from runtime.core.logs import add_logging_arguments
from runtime.core.partitioning import UNPARTITIONED, Partitioning
from runtime.core.registry import default_registry
from runtime.core.trace_index import DEFAULT_MAX_TRACES
from runtime.worker_layout import FLOW_ORDER

DOMAINS = FLOW_ORDER
DEFAULT_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
_RUNNER_DEFAULTS = RunnerConfig("defaults")
DEFAULT_LEASE_TTL_MS = _RUNNER_DEFAULTS.lease_ttl_ms
LEASE_TTL_MS_RANGE = (100, 3_600_000)  # RunnerConfig refuses under 100 ms
DEFAULT_DEDUPE_HORIZON_S = _RUNNER_DEFAULTS.processed_ttl_s
DEDUPE_HORIZON_S_RANGE = (1, 30 * 86_400)
MAX_RETAIN = 10_000_000
MAX_TRACES = 10_000_000


def _domains(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in DOMAINS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown domain(s) {', '.join(unknown) or '(none given)'}; choose from "
            + ", ".join(DOMAINS)
        )
    return names


def _symbols(value: str) -> tuple[str, ...]:
    names = tuple(name.strip().upper() for name in value.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one symbol, for example BTC-USD")
    return names


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} must be a finite number")
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than 0")
    return number


def _whole_number(minimum: int) -> Callable[[str], int]:
    """A whole number of at least ``minimum``."""
    floor = "must be 0 or more" if minimum == 0 else f"must be at least {minimum}"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{value!r} {floor}")
        return number

    return parse


def _bounded_int(low: int, high: int, unit: str) -> Callable[[str], int]:
    """A whole number in ``low..high`` (``unit`` names it in the error)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of {unit}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"{value!r} is out of range: give {low:,} to {high:,} {unit}"
            )
        return number

    return parse


def _bounded_seconds(low: float, high: float) -> Callable[[str], float]:
    """A finite number of seconds in ``low..high``."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"{value!r} is out of range: give {low:g} to {high:g} seconds"
            )
        return number

    return parse


def _namespace(value: str) -> str:
    try:
        return Keyspace(value).namespace
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _consumer_name(value: str) -> str:
    if not value or len(value) > 200 or not value.isprintable() or " " in value:
        raise argparse.ArgumentTypeError(
            f"{value!r}: a consumer name is 1-200 printable characters without spaces"
        )
    return value


def _instant(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs a time zone, for example +00:00")
    return moment


def _speed(value: str) -> float | None:
    if value.strip().lower() == "max":
        return None
    return _positive_float(value)


def _partition(value: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not I/N, for example 0/2") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{value!r}: I must be in 0..N-1 and N at least 1")
    return index, count


def _stream_partitions(value: str) -> Partitioning:
    try:
        partitioning = Partitioning.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    known = set(default_registry().names())
    unknown = sorted(set(partitioning.counts) - known)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return partitioning


def _equity(value: str) -> Decimal:
    try:
        return parse_decimal(value, "--equity", above=Decimal(0), maximum=Decimal("1e15"))
    except DecimalError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"feed file {value!r} does not exist")
    return path


def _bar(value: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
    text = value.strip().lower()
    unit = units.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        seconds = int(number) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a bar length; give seconds or a number with s, m, h or d (5m)"
        ) from None
    if not 0 < seconds <= 365 * 86_400:
        raise argparse.ArgumentTypeError(f"{value!r}: a bar is between 1 s and 365 days")
    return timedelta(seconds=seconds)


def _output_file(value: str) -> Path:
    path = Path(value)
    if path.is_dir() or not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"{value!r} cannot be written: give a file path in an existing directory"
        )
    return path


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine-url",
        "--redis-url",
        dest="redis_url",
        metavar="URL",
        default=os.environ.get("REDIS_URL"),
        help="the engine's URL: redis://, rediss://, unix://, redis+cluster://host:port[,...] "
        "or nats://host:port (JetStream); --redis-url is the same option; default: "
        "$REDIS_URL, else 127.0.0.1:6379 when it answers, else a private redis-server for the "
        "run",
    )
    parser.add_argument(
        "--namespace",
        type=_namespace,
        default=None,
        help="key prefix of a persistent system: the run resumes what it holds and leaves it "
        "there (default: a fresh namespace quantum-run-<time>-<random> for this run only, "
        "deleted when it ends)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("QUANTUM_STATE_DIR", "state")),
        help="where the policy snapshot policy-<namespace>.json is kept (default: ./state)",
    )
    add_logging_arguments(parser)
    parser.add_argument(
        "--grpc-addr",
        default="127.0.0.1:50051",
        help="control-plane listen address (default: 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--metrics-addr",
        default="127.0.0.1:9464",
        help="Prometheus metrics listen address (default: 127.0.0.1:9464)",
    )


def _add_engine_arguments(run: argparse.ArgumentParser) -> None:
    """How the engine room is tuned: takeover, dedupe, retention, trace index, backpressure.
    The README's "Sizing Redis" says how they set Redis's memory."""
    engine = run.add_argument_group("delivery, retention and memory")
    engine.add_argument(
        "--lease-ttl",
        type=_bounded_int(LEASE_TTL_MS_RANGE[0], LEASE_TTL_MS_RANGE[1], "ms"),
        default=DEFAULT_LEASE_TTL_MS,
        metavar="MS",
        help="a partition owner's lease: a dead owner's partition is taken over this long "
        f"after its last renewal (default: {DEFAULT_LEASE_TTL_MS})",
    )
    engine.add_argument(
        "--dedupe-horizon",
        type=_bounded_int(DEDUPE_HORIZON_S_RANGE[0], DEDUPE_HORIZON_S_RANGE[1], "seconds"),
        default=DEFAULT_DEDUPE_HORIZON_S,
        metavar="S",
        help="how long a processed-event mark is kept, i.e. how late a duplicate may arrive "
        f"and still be skipped (default: {DEFAULT_DEDUPE_HORIZON_S})",
    )
    engine.add_argument(
        "--retain",
        type=_bounded_int(1, MAX_RETAIN, "entries"),
        default=DEFAULT_RETAIN,
        metavar="N",
        help="history entries kept per stream beyond what a consumer group still needs "
        f"(default: {DEFAULT_RETAIN})",
    )
    engine.add_argument(
        "--max-traces",
        type=_bounded_int(1, MAX_TRACES, "traces"),
        default=DEFAULT_MAX_TRACES,
        metavar="N",
        help=f"traces kept in the trace index, the oldest dropped first (default: "
        f"{DEFAULT_MAX_TRACES})",
    )
    engine.add_argument(
        "--stream-partitions",
        type=_stream_partitions,
        default=UNPARTITIONED,
        metavar="TYPE=N,...",
        help="split event types' logs in N partitions by key (crc32 of the symbol mod N), "
        "e.g. market.tick=4,ai.signal.generated=4; every process of a run must be given the "
        "same; --partition I/N needs N to divide each count (default: none split)",
    )
    engine.add_argument(
        "--backpressure-timeout",
        type=_bounded_seconds(0.1, 86_400.0),
        default=DEFAULT_BACKPRESSURE_TIMEOUT_S,
        metavar="S",
        help="how long a publish waits for a full stream's slowest consumer group before it "
        f"fails with a Backpressure error (default: {DEFAULT_BACKPRESSURE_TIMEOUT_S:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantum", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the trading pipeline")
    _add_common(run)
    run.add_argument(
        "--domains",
        type=_domains,
        default=None,
        help="comma-separated domains to run (default: all six)",
    )
    run.add_argument(
        "--workers",
        type=_whole_number(1),
        default=None,
        help="spread the domains over N supervised processes (default: one per CPU core, at "
        "most one per domain; 1 when --domains or --partition lays the processes out)",
    )
    run.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        help="seconds to run, then stop and print the summary (default: until Ctrl-C)",
    )
    run.add_argument(
        "--symbols",
        type=_symbols,
        default=DEFAULT_SYMBOLS,
        help=f"symbols of the simulated feed (default: {','.join(DEFAULT_SYMBOLS)})",
    )
    run.add_argument(
        "--feed", type=_existing_file, default=None, help="replay a CSV (time,symbol,price,volume)"
    )
    run.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        help="feed pace: 1 = recorded (or --rate) speed, 10 = ten times faster, "
        "'max' = as fast as the pipeline takes them (default: 1)",
    )
    run.add_argument(
        "--rate",
        type=_positive_float,
        default=200.0,
        help="simulated ticks per second over all symbols (default: 200)",
    )
    run.add_argument("--seed", type=int, default=7, help="seed of the simulated feed")
    run.add_argument("--equity", type=_equity, default=Decimal(100_000), help="starting equity")
    run.add_argument(
        "--partition",
        type=_partition,
        default=None,
        metavar="I/N",
        help="with N processes hosting the same domains: this one takes partition I of N "
        "(by crc32 of the symbol), keeping every symbol's events in order (default: 0/1)",
    )
    run.add_argument(
        "--no-control-plane", action="store_true", help="do not serve the gRPC control plane"
    )
    run.add_argument(
        "--consumer-name",
        type=_consumer_name,
        default=None,
        help="this process's consumer name in every group (default: host-pid); a process "
        "restarted under the same name takes back its unacknowledged entries at once",
    )
    _add_engine_arguments(run)
    # Set by the --workers supervisor for its children; not for people.
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--feed-start", type=_instant, default=None, help=argparse.SUPPRESS)
    run.add_argument("--feed-skip", type=_whole_number(0), default=0, help=argparse.SUPPRESS)
    run.add_argument("--metrics-port-file", type=Path, default=None, help=argparse.SUPPRESS)

    add_server_arguments(run)
    acl = commands.add_parser(
        "redis-acl", help="print a Redis ACL file: one user per domain, each on its own keys"
    )
    acl.add_argument("--namespace", default="quantum", help="key prefix (default: quantum)")

    backtest = commands.add_parser(
        "backtest",
        help="replay a recorded feed through all six domains in logical time (no Redis)",
        description="Run the six domains over a recorded CSV in one process, in event-time "
        "order, and print the trader's report. Same input, same output, byte for byte.",
    )
    backtest.add_argument(
        "--feed",
        type=_existing_file,
        required=True,
        help="the recorded ticks: a CSV with time,symbol,price,volume",
    )
    backtest.add_argument(
        "--equity", type=_equity, default=Decimal(100_000), help="starting equity"
    )
    backtest.add_argument(
        "--seed", type=int, default=0, help="seed of the ticks' event and trace ids (default: 0)"
    )
    backtest.add_argument(
        "--bar",
        type=_bar,
        default=timedelta(minutes=1),
        help="return period of Sharpe and Sortino: seconds, or 30s, 5m, 1h, 1d (default: 1m)",
    )
    backtest.add_argument(
        "--trades", type=_output_file, default=None, help="write the closed trades to this CSV"
    )
    backtest.add_argument(
        "--plot", type=_output_file, default=None, help="draw equity and drawdown to this PNG"
    )
    backtest.add_argument(
        "--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR"
    )
    commands.add_parser(
        "control-plane",
        help="serve only the gRPC control plane (see: quantum control-plane --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["control-plane"]:
        from runtime import bootstrap

        return bootstrap.control_plane(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "backtest":
        from runtime import backtest

        return backtest.run(args)
    from runtime import bootstrap  # imported late: parsing errors stay fast and clear

    if args.command == "redis-acl":
        return bootstrap.redis_acl(args)
    return bootstrap.run(args)


if __name__ == "__main__":
    sys.exit(main())
