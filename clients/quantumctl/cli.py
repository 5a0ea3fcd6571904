"""``quantumctl``: argument parsing and the commands.

    quantumctl policy get | set-mode MODE | update PATH=VALUE... | watch | history
    quantumctl health | domains
    quantumctl trace get TRACE_ID | trace follow [--trace-id ID] [--type T] ...
    quantumctl events TYPE [--start-id ID] [--since TIME] [--limit N]
    quantumctl replay DOMAIN --type T [...] [--publish]
    quantumctl dlq list [DOMAIN] | dlq redrive DOMAIN [ENTRY_ID...]
    quantumctl dlq purge DOMAIN (ENTRY_ID... | --all)
    quantumctl state repair DOMAIN --reason R [--reset] [--dry-run] | state history [DOMAIN]
    quantumctl top

Tables for people; ``--json`` prints JSON lines for scripts. The server address and token
come from ``--addr``/``--token`` or ``QUANTUM_ADDR``/``QUANTUM_TOKEN``; without a token, a
server on this machine is called with the operator token it keeps in its state directory
(``--state-dir``, ``QUANTUM_STATE_DIR`` or ``./state``: the same default as ``quantum run``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path

from rich.console import Console

from clients.control_client import (
    DEFAULT_ADDR,
    ControlClient,
    ControlError,
    TlsOptions,
    local_token,
)
from clients.quantumctl import commands, dead_letters, state_commands
from clients.quantumctl.state_commands import add_state_commands


def _timestamp_arg(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO time, for example 2026-11-23T22:00:00+00:00"
        ) from None


def _add_range(parser: argparse.ArgumentParser, *, type_required: bool) -> None:
    if type_required:
        parser.add_argument("--type", dest="event_type", required=True, help="the event type")
    parser.add_argument("--start-id", default="", help="first stream entry id (inclusive)")
    parser.add_argument("--end-id", default="", help="last stream entry id (inclusive)")
    parser.add_argument("--since", type=_timestamp_arg, help="start time (ISO 8601)")
    parser.add_argument("--until", type=_timestamp_arg, help="end time (ISO 8601)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many events")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="quantumctl", description="Operate a Quantum Trader core through its control plane."
    )
    parser.add_argument("--addr", default=env.get("QUANTUM_ADDR", DEFAULT_ADDR))
    parser.add_argument(
        "--token", default=env.get("QUANTUM_TOKEN"), help="bearer token (or $QUANTUM_TOKEN)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env.get("QUANTUM_STATE_DIR") or "state"),
        help="where a local server keeps its operator token, used when no token is given "
        "(default: $QUANTUM_STATE_DIR, else ./state)",
    )
    # QUANTUM_CLIENT_TLS_*, not the server's QUANTUM_TLS_CERT/KEY: a shell that serves the
    # control plane would otherwise present the server's key pair as a client certificate.
    for flag, name in (("ca", "CA"), ("cert", "CERT"), ("key", "KEY")):
        variable = f"QUANTUM_CLIENT_TLS_{name}"
        parser.add_argument(
            f"--tls-{flag}", type=Path, default=env.get(variable) or None, help=f"(or ${variable})"
        )
    parser.add_argument("--server-name", default="", help="TLS server name override")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline per call, seconds")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    sub = parser.add_subparsers(dest="command", required=True)

    policy = sub.add_parser("policy", help="read and change the risk policy")
    policy_sub = policy.add_subparsers(dest="action", required=True)
    policy_sub.add_parser("get", help="the current policy")
    set_mode = policy_sub.add_parser("set-mode", help="switch the risk mode")
    set_mode.add_argument("mode", help="aggressive, normal or defensive")
    update = policy_sub.add_parser("update", help="change fields: normal.max_leverage=2.5 ...")
    update.add_argument("changes", nargs="+", metavar="PATH=VALUE")
    for write in (set_mode, update):
        write.add_argument("--reason", required=True, help="why (kept in the history)")
        write.add_argument(
            "--expected-version", type=int, default=None, help="fail if the policy moved on"
        )
    watch = policy_sub.add_parser("watch", help="print every change as it happens")
    watch.add_argument("--after-version", type=int, default=None)
    history = policy_sub.add_parser("history", help="the change history, newest first")
    history.add_argument("--page-size", type=int, default=20)
    history.add_argument("--page-token", default="")

    health = sub.add_parser(
        "health",
        help="the system health, per component; exit code 0 healthy, 1 degraded, 2 critical, "
        "3 not known (the call failed)",
    )
    health.add_argument(
        "--include-host",
        action="store_true",
        help="let the host's CPU, memory and disk count in the exit code (default: shown only)",
    )
    sub.add_parser("domains", help="domains, consumer groups, lag and pending")

    trace = sub.add_parser("trace", help="follow requests by trace id")
    trace_sub = trace.add_subparsers(dest="action", required=True)
    trace_get = trace_sub.add_parser("get", help="every event of one trace, in order")
    trace_get.add_argument("trace_id")
    follow = trace_sub.add_parser("follow", help="live events matching the filters")
    follow.add_argument("--trace-id", default="")
    follow.add_argument("--type", dest="event_types", action="append", default=[])
    follow.add_argument("--domain", dest="domains", action="append", default=[])
    follow.add_argument("--symbol", dest="symbols", action="append", default=[])
    follow.add_argument("--count", type=int, default=0, help="stop after this many events")

    events = sub.add_parser("events", help="read stored events of one type")
    events.add_argument("event_type")
    _add_range(events, type_required=False)

    replay = sub.add_parser("replay", help="re-deliver a range to one domain (dry run)")
    replay.add_argument("domain")
    _add_range(replay, type_required=True)
    replay.add_argument(
        "--publish", action="store_true", help="publish the outputs (operator role)"
    )

    dlq = sub.add_parser("dlq", help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="action", required=True)
    dlq_list = dlq_sub.add_parser(
        "list", help="dead letters, oldest first: of one domain, or of every domain"
    )
    dlq_list.add_argument("domain", nargs="?", default="", help="default: every domain")
    dlq_list.add_argument("--page-size", type=int, default=50)
    dlq_list.add_argument("--page-token", default="")
    redrive = dlq_sub.add_parser("redrive", help="put dead letters back on their streams")
    redrive.add_argument("domain")
    redrive.add_argument("entry_ids", nargs="*", help="default: every letter of the domain")
    purge = dlq_sub.add_parser(
        "purge", help="delete dead letters for good (operator role; audited)"
    )
    purge.add_argument("domain")
    purge.add_argument("entry_ids", nargs="*", help="the letters to delete")
    purge.add_argument(
        "--all", dest="purge_all", action="store_true", help="delete every letter of the domain"
    )

    add_state_commands(sub)

    top = sub.add_parser("top", help="a live dashboard")
    top.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws")
    top.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    return parser


def make_client(args: argparse.Namespace) -> ControlClient:
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        tls = TlsOptions(args.tls_ca, args.tls_cert, args.tls_key, args.server_name)
    token = args.token or (local_token(args.state_dir) if _is_local(args.addr) else None)
    return ControlClient(args.addr, token=token, tls=tls, timeout=args.timeout)


def _is_local(addr: str) -> bool:
    """A loopback address: only a server on this machine gets the local operator token."""
    host = addr.rpartition(":")[0].strip("[]") or addr
    return host in ("localhost", "::1") or host.startswith("127.")


COMMANDS: dict[
    tuple[str, str | None],
    Callable[[ControlClient, argparse.Namespace, commands.Output], Awaitable[int]],
] = {
    ("policy", "get"): commands.policy_get,
    ("policy", "set-mode"): commands.policy_set_mode,
    ("policy", "update"): commands.policy_update,
    ("policy", "watch"): commands.policy_watch,
    ("policy", "history"): commands.policy_history,
    ("health", None): commands.health,
    ("domains", None): commands.domains,
    ("trace", "get"): commands.trace_get,
    ("trace", "follow"): commands.trace_follow,
    ("events", None): commands.events,
    ("replay", None): commands.replay,
    ("dlq", "list"): dead_letters.dlq_list,
    ("dlq", "redrive"): dead_letters.dlq_redrive,
    ("dlq", "purge"): dead_letters.dlq_purge,
    ("state", "repair"): state_commands.state_repair,
    ("state", "history"): state_commands.state_history,
    ("top", None): commands.top,
}


async def _run(args: argparse.Namespace, output: commands.Output) -> int:
    command = COMMANDS[(args.command, getattr(args, "action", None))]
    async with make_client(args) as client:
        return await command(client, args, output)


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    output = commands.Output(
        json=args.json,
        console=Console(),
        errors=Console(stderr=True),
        addr=args.addr,
        timeout_s=args.timeout,
    )
    try:
        return asyncio.run(_run(args, output))
    except ControlError as error:
        output.error(error)
        return commands.HEALTH_UNKNOWN if args.command == "health" else 1
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        print(f"quantumctl: {error}", file=sys.stderr)
        return 1
