"""The command line of one ``--workers`` child: ``quantum run`` for one group of domains.

A child gets everything that shapes its domains and feed from its parent's arguments, and
what the parent decided for the whole run: the Redis URL (also a private redis-server the
parent started), the namespace, the feed's start time, and a consumer name that is the same
at every restart of that worker, so a restarted worker takes back its own unacknowledged
entries at once instead of waiting for another consumer to claim them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from runtime.core.host import default_consumer_name

FEED_DOMAIN = "market_data"


class WorkerCommand:
    """Builds the argv of each worker of one run."""

    def __init__(
        self,
        args: argparse.Namespace,
        redis_url: str,
        namespace: str,
        feed_start: datetime,
        metrics_port_file: Callable[[int], Path] | None = None,
    ) -> None:
        self._args = args
        self._metrics_port_file = metrics_port_file
        self._redis_url = redis_url
        self._namespace = namespace
        self._feed_start = feed_start
        self._consumer_prefix = default_consumer_name()  # host-pid of the supervisor

    def consumer_name(self, index: int) -> str:
        return f"{self._consumer_prefix}-w{index}"

    def argv(self, index: int, domains: Sequence[str], *, feed_skip: int = 0) -> list[str]:
        """``quantum run --supervised ...`` hosting ``domains``; the feed's worker also gets
        the duration and where to resume (``feed_skip`` ticks are already published)."""
        args = self._args
        partition, partitions = args.partition
        argv = [
            sys.executable,
            "-m",
            "runtime.worker_main",  # catches a stop signal from its first line
            "run",
            "--supervised",
            "--no-control-plane",
            "--workers",
            "1",
            "--domains",
            ",".join(domains),
            "--consumer-name",
            self.consumer_name(index),
            "--redis-url",
            self._redis_url,
            "--namespace",
            self._namespace,
            "--state-dir",
            str(args.state_dir),
            "--log-level",
            str(args.log_level),
            "--log-format",
            str(getattr(args, "log_format", "auto")),
            "--equity",
            str(args.equity),
            "--partition",
            f"{partition}/{partitions}",
            "--lease-ttl",
            str(args.lease_ttl),
            "--dedupe-horizon",
            str(args.dedupe_horizon),
            "--retain",
            str(args.retain),
            "--max-traces",
            str(args.max_traces),
            "--backpressure-timeout",
            repr(args.backpressure_timeout),
        ]
        if self._metrics_port_file is not None:
            argv += ["--metrics-port-file", str(self._metrics_port_file(index))]
        if FEED_DOMAIN in domains:
            argv += [
                "--symbols",
                ",".join(args.symbols),
                "--speed",
                "max" if args.speed is None else repr(args.speed),
                "--rate",
                repr(args.rate),
                "--seed",
                str(args.seed),
                "--feed-start",
                self._feed_start.isoformat(),
                "--feed-skip",
                str(feed_skip),
            ]
            if args.feed is not None:
                argv += ["--feed", str(args.feed)]
            if args.duration is not None:
                argv += ["--duration", repr(args.duration)]
        return argv
