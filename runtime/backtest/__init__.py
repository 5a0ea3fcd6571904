"""``quantum backtest``: the six domains over a recorded feed, in one process, in logical time.

A composition root like ``runtime.bootstrap`` (it imports domains; nothing imports it but the
command line), on the in-memory engine only: no Redis, no wall clock, byte-identical output
for the same input.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from runtime.backtest.engine import BacktestResult, run_backtest
from runtime.backtest.report import BacktestReport, build_report, write_trades_csv
from runtime.core.logs import configure_logging
from runtime.domains.market_data import CsvFeedError

__all__ = ["BacktestResult", "report_of", "run", "run_backtest"]


def report_of(result: BacktestResult, *, bar: timedelta) -> BacktestReport:
    """The trader's report of a finished run."""
    figures = result.portfolio.ledger.figures()
    report = build_report(
        list(result.events()),
        feed=result.feed_name,
        starting_equity=result.starting_equity,
        final_equity=figures.equity,
        realized_pnl=figures.realized_pnl,
        unrealized_pnl=figures.unrealized_pnl,
        bar=bar,
    )
    report.policy_changes = [
        f"v{c.version} {', '.join(f'{f}' for f in c.fields)} by {c.changed_by}: {c.reason}"
        for c in result.policy.history
    ]
    report.dead_letters = sum(len(v) for v in result.broker.dead_letters.values())
    report.events_digest = result.events_digest()
    report.portfolio_digest = result.portfolio_digest()
    return report


def run(args: argparse.Namespace) -> int:
    """``quantum backtest``: run, print the report, write the trades and the plot if asked."""
    try:
        configure_logging(args.log_level)
        result = asyncio.run(run_backtest(args.feed, equity=args.equity, seed=args.seed))
    except (CsvFeedError, ValueError) as exc:
        print(f"quantum backtest: {exc}", file=sys.stderr)
        return 2
    report = report_of(result, bar=args.bar)
    print(report.render(), flush=True)
    if args.trades is not None:
        write_trades_csv(report.trades, args.trades)
        print(f"trades written to {args.trades}")
    if args.plot is not None:
        from runtime.backtest.plot import PlotUnavailable, plot_equity

        try:
            plot_equity(report, args.plot)
        except PlotUnavailable as exc:
            print(f"quantum backtest: {exc}", file=sys.stderr)
            return 2
        print(f"equity plot written to {args.plot}")
    return 0
