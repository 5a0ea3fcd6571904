"""What each ``quantumctl`` command does: a call, then a table or JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from quantum.control.v1 import runtime_service_pb2 as runtime_pb
from quantum.control.v1.stored_event_pb2 import StoredEvent
from quantum.events.v1 import policy_pb2
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.control_client import ControlClient, ControlError, event_range
from clients.quantumctl.dashboard import run_dashboard
from clients.quantumctl.hints import hint_for

_STATUS_STYLE = {
    runtime_pb.HEALTH_STATUS_HEALTHY: "green",
    runtime_pb.HEALTH_STATUS_DEGRADED: "yellow",
    runtime_pb.HEALTH_STATUS_CRITICAL: "red",
}


def as_dict(message: Message) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def health_name(status: int) -> str:
    return runtime_pb.HealthStatus.Name(status).removeprefix("HEALTH_STATUS_")  # type: ignore[arg-type]


@dataclass
class Output:
    """Where results go: rich tables for people, or JSON lines (``--json``) for scripts."""

    json: bool
    console: Console
    errors: Console
    addr: str = ""
    timeout_s: float = 5.0

    def message(self, message: Message) -> None:
        self.data(as_dict(message))

    def data(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")
        sys.stdout.flush()

    def table(self, table: Table) -> None:
        self.console.print(table)

    def error(self, error: ControlError) -> None:
        details = error.details
        hint = hint_for(details, self.addr, self.timeout_s)
        if self.json:
            self.data(
                {
                    "error": {
                        "code": details.code.name,
                        "reason": details.reason,
                        "message": details.message,
                        "metadata": dict(details.metadata),
                        "field_violations": [
                            {"field": v.field, "description": v.description}
                            for v in details.violations
                        ],
                        "hint": hint,
                    }
                }
            )
            return
        reason = f" ({error.reason})" if error.reason else ""
        self.errors.print(
            f"[red]error[/red] {error.code.name}{reason}: {escape(details.message)}",
            markup=True,
            highlight=False,
        )
        for violation in error.violations:
            self.errors.print(
                f"  [bold]{escape(violation.field)}[/bold]: {escape(violation.description)}"
            )
        if hint:
            self.errors.print(f"hint: {hint}", markup=False, highlight=False)


# -- policy -----------------------------------------------------------------------------------


def policy_table(policy: policy_pb2.Policy) -> Table:
    mode = policy_pb2.RiskMode.Name(policy.mode).removeprefix("RISK_MODE_")
    state = policy_pb2.TradingState.Name(policy.trading_state).removeprefix("TRADING_STATE_")
    table = Table(
        title=f"policy v{policy.version}: mode {mode}, trading {state}",
        caption=f"by {policy.updated_by or '-'}: {policy.reason or '-'}",
    )
    table.add_column("limit")
    for name in ("aggressive", "normal", "defensive"):
        style = "bold" if name.upper() == mode else ""
        table.add_column(name + (" (active)" if style else ""), style=style)
    for field in policy_pb2.ModeLimits.DESCRIPTOR.fields:
        values = []
        for name in ("aggressive", "normal", "defensive"):
            value = getattr(getattr(policy, name), field.name)
            values.append(", ".join(value) if field.name == "allowed_symbols" else str(value))
        table.add_row(field.name, *values)
    return table


async def policy_get(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    policy = await client.get_policy()
    if out.json:
        out.message(policy)
    else:
        out.table(policy_table(policy))
    return 0


async def policy_set_mode(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    try:
        mode: str | int = args.mode
        policy = await client.switch_mode(
            mode, reason=args.reason, expected_version=args.expected_version
        )
    except ValueError:
        out.errors.print(f"[red]error[/red] {args.mode!r} is not aggressive, normal or defensive")
        return 2
    if out.json:
        out.message(policy)
    else:
        out.table(policy_table(policy))
    return 0


def parse_changes(items: list[str]) -> dict[str, object]:
    changes: dict[str, object] = {}
    for item in items:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise ValueError(f"{item!r} is not PATH=VALUE, for example normal.max_leverage=2.5")
        changes[path.strip()] = value.strip()
    return changes


async def policy_update(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    try:
        changes = parse_changes(args.changes)
        policy = await client.update_policy(
            changes, reason=args.reason, expected_version=args.expected_version
        )
    except ValueError as exc:
        out.errors.print(f"[red]error[/red] {exc}")
        return 2
    if out.json:
        out.message(policy)
    else:
        out.table(policy_table(policy))
    return 0


async def policy_watch(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    async for update in client.watch_policy(args.after_version):
        if out.json:
            out.message(update)
        elif update.HasField("change"):
            change = update.change
            out.console.print(
                f"v{change.version} {change.changed_at.ToJsonString()} {change.changed_by}: "
                f"{', '.join(change.changed_fields)} ({change.reason})"
            )
        else:
            out.table(policy_table(update.policy))
    return 0


async def policy_history(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    page = await client.policy_history(args.page_size, args.page_token)
    if out.json:
        out.message(page)
        return 0
    table = Table(title="policy history (newest first)")
    for column in ("version", "changed at", "by", "fields", "reason"):
        table.add_column(column)
    for change in page.changes:
        table.add_row(
            str(change.version),
            change.changed_at.ToJsonString(),
            change.changed_by,
            ", ".join(change.changed_fields),
            change.reason,
        )
    if page.next_page_token:
        table.caption = f"more: --page-token {page.next_page_token}"
    out.table(table)
    return 0


# -- health and domains -----------------------------------------------------------------------


def health_table(
    response: runtime_pb.GetSystemHealthResponse,
    status: runtime_pb.HealthStatus.ValueType,
    *,
    include_host: bool,
) -> Table:
    style = _STATUS_STYLE.get(status, "")
    table = Table(
        title=f"system health: [{style}]{health_name(status)}[/{style}]",
        caption=None
        if include_host
        else "the host row is shown, not counted (--include-host counts it)",
    )
    for column in ("component", "status", "detail", "figures"):
        table.add_column(column)
    for component in response.components:
        colour = _STATUS_STYLE.get(component.status, "")
        table.add_row(
            component.name,
            f"[{colour}]{health_name(component.status)}[/{colour}]",
            component.detail,
            ", ".join(f"{k}={v}" for k, v in sorted(component.figures.items())),
        )
    return table


# ``quantumctl health`` exit codes: the system's health, so a probe can switch on it.
HEALTH_EXIT_CODES = {
    runtime_pb.HEALTH_STATUS_HEALTHY: 0,
    runtime_pb.HEALTH_STATUS_DEGRADED: 1,
    runtime_pb.HEALTH_STATUS_CRITICAL: 2,
}
HEALTH_UNKNOWN = 3  # the control plane could not be asked
HOST_COMPONENT = "host"


def system_status(
    response: runtime_pb.GetSystemHealthResponse, *, include_host: bool
) -> runtime_pb.HealthStatus.ValueType:
    """The worst status of the system's components; the host's load counts only when asked,
    so a busy machine does not make a healthy pipeline's probe flap."""
    statuses = [c.status for c in response.components if include_host or c.name != HOST_COMPONENT]
    return max(statuses, default=response.status)


async def health(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    response = await client.system_health()
    status = system_status(response, include_host=args.include_host)
    if out.json:
        out.data({**as_dict(response), "system_status": runtime_pb.HealthStatus.Name(status)})
    else:
        out.table(health_table(response, status, include_host=args.include_host))
    return HEALTH_EXIT_CODES.get(status, HEALTH_UNKNOWN)


def domains_table(domains: list[runtime_pb.DomainInfo]) -> Table:
    table = Table(title="domains")
    for column in (
        "domain",
        "state",
        "event type",
        "consumers",
        "lag",
        "pending",
        "last delivered",
    ):
        table.add_column(column)
    for domain in domains:
        if not domain.groups:
            table.add_row(domain.name, domain.state, "-", "-", "-", "-", "-")
        for index, group in enumerate(domain.groups):
            table.add_row(
                domain.name if index == 0 else "",
                domain.state if index == 0 else "",
                group.stream.rpartition(":stream:")[2],
                str(group.consumers),
                str(group.lag),
                str(group.pending),
                group.last_delivered_id,
            )
    return table


async def domains(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    found = await client.list_domains()
    if out.json:
        for domain in found:
            out.message(domain)
    else:
        out.table(domains_table(found))
    return 0


# -- traces and events ------------------------------------------------------------------------


PAYLOAD_WIDTH = 60


def one_line(text: str, width: int = PAYLOAD_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis (--json has it all)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def events_table(title: str, events: list[StoredEvent]) -> Table:
    table = Table(title=title, caption="payloads cut to one line: --json prints them whole")
    for column in ("time", "type", "key", "trace id", "event id", "caused by"):
        table.add_column(column, no_wrap=True)
    table.add_column("payload", no_wrap=True, overflow="ellipsis")
    for event in events:
        envelope = event.envelope
        table.add_row(
            envelope.occurred_at.ToJsonString(),
            envelope.event_type,
            envelope.partition_key,
            envelope.trace_id,
            envelope.event_id,
            envelope.causation_id or "-",
            one_line(event.payload_json),
        )
    return table


async def trace_get(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    found = await client.get_trace(args.trace_id)
    if out.json:
        for event in found:
            out.message(event)
    else:
        out.table(events_table(f"trace {args.trace_id}: {len(found)} events", found))
    return 0


def _event_line(event: StoredEvent) -> str:
    envelope = event.envelope
    return (
        f"{envelope.occurred_at.ToJsonString()} {envelope.event_type:<28} "
        f"{envelope.producer:<12} {envelope.partition_key:<10} trace={envelope.trace_id} "
        f"{event.payload_json}"
    )


async def trace_follow(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    seen = 0
    async for event in client.follow(
        trace_id=args.trace_id,
        event_types=args.event_types,
        domains=args.domains,
        symbols=args.symbols,
    ):
        if out.json:
            out.message(event)
        else:
            out.console.print(_event_line(event), markup=False, highlight=False)
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0


def _range(args: argparse.Namespace) -> Any:
    return event_range(
        args.event_type,
        start_id=args.start_id,
        end_id=args.end_id,
        start_time=args.since,
        end_time=args.until,
        limit=args.limit,
    )


async def events(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    found = []
    async for event in client.read_events(_range(args)):
        if out.json:
            out.message(event)
        else:
            found.append(event)
    if not out.json:
        out.table(events_table(f"{args.event_type}: {len(found)} events", found))
    return 0


async def replay(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    failures = outputs = 0
    mode = "publishing" if args.publish else "dry run"
    with Progress(
        TextColumn(f"replay to {args.domain} ({mode})"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out.errors,
        disable=out.json,
        transient=False,
    ) as progress:
        task = progress.add_task("replay", total=None)
        async for step in client.replay(args.domain, _range(args), publish=args.publish):
            progress.update(task, completed=step.processed, total=step.total)
            outputs += len(step.outputs)
            if step.error:
                failures += 1
            if out.json:
                out.message(step)
            elif step.error:
                progress.console.print(
                    f"[red]failed[/red] {step.input.entry_id}: {step.error}", markup=True
                )
    if not out.json:
        out.console.print(
            f"{outputs} outputs, {failures} failed inputs"
            + (" (published)" if args.publish else " (dry run: nothing published)")
        )
    return 1 if failures else 0


async def top(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    return await run_dashboard(
        client, out.console, refresh_s=args.refresh, duration_s=args.duration, as_json=out.json
    )
