"""``quantumctl dlq``: list, redrive and purge dead letters."""

from __future__ import annotations

import argparse

from quantum.control.v1 import replay_service_pb2 as replay_pb
from rich.table import Table

from clients.control_client import ControlClient
from clients.quantumctl.commands import Output, as_dict, one_line


def dead_letters_table(title: str, letters: list[replay_pb.DeadLetter]) -> Table:
    table = Table(title=title)
    for column in ("domain", "entry id", "failed at", "event type", "reason", "attempts"):
        table.add_column(column, no_wrap=True)
    table.add_column("error", no_wrap=True, overflow="ellipsis")
    table.add_column("redriven", no_wrap=True)
    prefix_end = ":stream:"
    for letter in letters:
        table.add_row(
            letter.domain,
            letter.entry_id,
            letter.failed_at.ToJsonString(),
            letter.original_stream.rpartition(prefix_end)[2],
            letter.reason,
            str(letter.attempts),
            one_line(f"{letter.error_type}: {letter.error_message}"),
            letter.redriven_entry_id or "-",
        )
    return table


async def dlq_list(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    if not args.domain:
        return await _dlq_list_all(client, args, out)
    page = await client.dead_letters(args.domain, args.page_size, args.page_token)
    if out.json:
        out.message(page)
        return 0
    table = dead_letters_table(f"dead letters of {args.domain}", list(page.dead_letters))
    if page.next_page_token:
        table.caption = f"more: --page-token {page.next_page_token}"
    out.table(table)
    return 0


async def _dlq_list_all(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    """The first page of every domain's dead letters."""
    if args.page_token:
        out.errors.print("[red]error[/red] --page-token needs a DOMAIN: tokens are per domain")
        return 2
    letters: list[replay_pb.DeadLetter] = []
    more: list[str] = []
    for domain in await client.list_domains():
        page = await client.dead_letters(domain.name, args.page_size)
        if out.json:
            out.data({"domain": domain.name, **as_dict(page)})
        letters.extend(page.dead_letters)
        if page.next_page_token:
            more.append(domain.name)
    if not out.json:
        table = dead_letters_table(f"dead letters of every domain: {len(letters)}", letters)
        if more:
            table.caption = "more in: " + ", ".join(more) + " (quantumctl dlq list DOMAIN)"
        out.table(table)
    return 0


async def dlq_redrive(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    response = await client.redrive(args.domain, args.entry_ids)
    if out.json:
        out.message(response)
    else:
        out.console.print(
            f"redriven {response.redriven}, already redriven before {response.already_redriven}"
        )
    return 0


async def dlq_purge(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    if bool(args.entry_ids) == args.purge_all:
        out.errors.print(
            "[red]error[/red] name the letters to delete (ENTRY_ID ...) or pass --all, not both"
        )
        return 2
    response = await client.purge(args.domain, args.entry_ids, purge_all=args.purge_all)
    if out.json:
        out.message(response)
    else:
        out.console.print(f"purged {response.purged} dead letters of {args.domain}")
    return 0
