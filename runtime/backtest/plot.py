"""``quantum backtest --plot``: the equity curve and the drawdown under it, as a PNG.

matplotlib is an optional dependency (``pip install 'quantum-trader[plot]'``); it is imported
only here, when a plot is asked for, with the non-interactive Agg backend.
"""

from __future__ import annotations

from pathlib import Path

from runtime.backtest.report import BacktestReport


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_equity(report: BacktestReport, path: Path) -> None:
    """Write the equity curve (top) and the drawdown from the running peak (bottom)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install matplotlib (or the 'plot' extra)"
        ) from exc
    times = [report.start] + [point.at for point in report.equity]
    equity = [float(report.starting_equity)] + [float(point.equity) for point in report.equity]
    drawdown: list[float] = []
    peak = equity[0]
    for value in equity:
        peak = max(peak, value)
        drawdown.append((value / peak - 1) * 100 if peak > 0 else 0.0)
    figure, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 6), gridspec_kw={"height_ratios": [3, 1]}
    )
    try:
        top.step(times, equity, where="post", color="tab:blue", linewidth=1.2)
        top.axhline(equity[0], color="grey", linewidth=0.8, linestyle="--")
        top.set_ylabel("equity")
        top.set_title(
            f"{report.feed}: return {float(report.total_return) * 100:.2f} %, "
            f"max drawdown {float(report.drawdown.fraction) * 100:.2f} %, "
            f"{len(report.trades)} trades"
        )
        top.grid(True, alpha=0.3)
        top.ticklabel_format(axis="y", useOffset=False, style="plain")
        bottom.fill_between(times, drawdown, 0, step="post", color="tab:red", alpha=0.4)
        bottom.set_ylabel("drawdown %")
        bottom.grid(True, alpha=0.3)
        locator = bottom.xaxis.get_major_locator()
        formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
        bottom.xaxis.set_major_formatter(formatter)
        figure.tight_layout()
        figure.savefig(path, dpi=100, metadata={"Software": None})
    finally:
        plt.close(figure)
