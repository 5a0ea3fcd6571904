"""``quantumctl state``: repair a domain's saved state, and list the repairs made."""

from __future__ import annotations

import argparse

from quantum.control.v1 import replay_service_pb2 as replay_pb
from rich.table import Table

from clients.control_client import ControlClient
from clients.quantumctl.commands import Output


def add_state_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state = sub.add_parser("state", help="repair a domain's saved state")
    state_sub = state.add_subparsers(dest="action", required=True)
    repair = state_sub.add_parser(
        "repair", help="rebuild a domain's state from its retained inputs (or --reset it)"
    )
    repair.add_argument("domain")
    repair.add_argument("--reason", required=True, help="why (kept in the repair record)")
    repair.add_argument("--reset", action="store_true", help="store an empty state instead")
    repair.add_argument("--dry-run", action="store_true", help="report only, store nothing")
    repair.add_argument(
        "--partition", type=_partition, default=(0, 1), metavar="I/N", help="default: 0/1"
    )
    history = state_sub.add_parser("history", help="the state repairs made, newest first")
    history.add_argument("domain", nargs="?", default="")
    history.add_argument("--page-size", type=int, default=20)


def _partition(value: str) -> tuple[int, int]:
    index, sep, count = value.partition("/")
    if not (sep and index.isascii() and index.isdigit() and count.isascii() and count.isdigit()):
        raise argparse.ArgumentTypeError(f"{value!r} is not I/N, for example 0/2")
    return int(index), int(count)


def _mode(mode: int) -> str:
    return replay_pb.RepairMode.Name(mode).removeprefix("REPAIR_MODE_").lower()  # type: ignore[arg-type]


def repairs_table(repairs: list[replay_pb.StateRepair], title: str) -> Table:
    table = Table(title=title)
    for column in ("at", "domain", "mode", "by", "inputs", "refused", "bytes", "epoch", "reason"):
        table.add_column(column, overflow="fold")
    for repair in repairs:
        table.add_row(
            repair.changed_at.ToJsonString(),
            repair.domain,
            _mode(repair.mode),
            repair.changed_by,
            str(repair.inputs_replayed),
            str(repair.inputs_refused),
            str(repair.state_bytes),
            str(repair.state_epoch),
            repair.reason,
        )
    return table


async def state_repair(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    partition, partitions = args.partition
    response = await client.repair_state(
        args.domain,
        reset=args.reset,
        reason=args.reason,
        dry_run=args.dry_run,
        partition=partition,
        partitions=partitions,
    )
    if out.json:
        out.message(response)
        return 0
    verb = "would be stored (dry run)" if not response.stored else "stored"
    out.table(repairs_table([response.repair], f"state of {args.domain} {verb}"))
    for refused in response.refused_inputs:
        out.console.print(f"  refused: {refused}")
    return 0


async def state_history(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    repairs = await client.state_repairs(args.domain, args.page_size)
    if out.json:
        for repair in repairs:
            out.message(repair)
        return 0
    out.table(repairs_table(repairs, "state repairs (newest first)"))
    return 0
