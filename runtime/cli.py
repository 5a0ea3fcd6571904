"""``quantum``: the runtime's command line.

    quantum run [--workers N | --domains a,b] [--duration S] [--symbols A,B] [--feed FILE.csv] ...
    quantum control-plane [--grpc-addr HOST:PORT] ...

Parsing only: the wiring lives in ``runtime.bootstrap``, the composition root.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from control_plane.server import add_server_arguments
from runtime.core.keys import Keyspace
from runtime.worker_layout import FLOW_ORDER

DOMAINS = FLOW_ORDER
DEFAULT_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")


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
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than 0")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be 0 or more")
    return number


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


def _decimal(value: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{value!r} is not a decimal number") from None


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"feed file {value!r} does not exist")
    return path


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="Redis to use (default: $REDIS_URL, else 127.0.0.1:6379 when it answers, "
        "else a private redis-server for the run)",
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
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
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
        type=_positive_int,
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
    run.add_argument("--equity", type=_decimal, default=Decimal(100_000), help="starting equity")
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
    # Set by the --workers supervisor for its children; not for people.
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--feed-start", type=_instant, default=None, help=argparse.SUPPRESS)
    run.add_argument("--feed-skip", type=_count, default=0, help=argparse.SUPPRESS)
    run.add_argument("--metrics-port-file", type=Path, default=None, help=argparse.SUPPRESS)

    add_server_arguments(run)
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
    from runtime import bootstrap  # imported late: parsing errors stay fast and clear

    return bootstrap.run(args)


if __name__ == "__main__":
    sys.exit(main())
