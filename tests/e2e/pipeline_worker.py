"""A worker process for the split-pipeline test: hosts some of the domains on a real Redis.

    python -m tests.e2e.pipeline_worker --redis-url URL --namespace NS --state-dir DIR \
        --domains ai_engine,risk_safety

Runs until SIGTERM, then drains (``run_actors``) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from runtime.core.actor import Actor
from runtime.core.bus import EventBus
from runtime.core.host import run_actors
from runtime.core.keys import Keyspace
from runtime.core.policy.store import PolicyStore
from runtime.core.runner import RunnerConfig
from runtime.domains.ai_engine import AiEngine
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety

EQUITY = Decimal("100000")


def build(domains: list[str], store: PolicyStore) -> list[Actor]:
    """The same actors, configured the same way, whichever process hosts them."""
    makers = {
        "ai_engine": lambda: AiEngine(),
        "risk_safety": lambda: RiskSafety(store, starting_equity=EQUITY),
        "execution": lambda: Execution(
            PaperExchange(slippage_bps=Decimal("1"), fee_bps=Decimal("10"))
        ),
        "portfolio": lambda: Portfolio(starting_equity=EQUITY),
        "analytics": lambda: Analytics(store),
    }
    return [makers[name]() for name in domains]


async def serve(args: argparse.Namespace) -> int:
    redis = aioredis.Redis.from_url(args.redis_url)
    keyspace = Keyspace(args.namespace)
    store = PolicyStore(redis, keyspace, state_dir=Path(args.state_dir))
    await store.start()
    try:
        actors = build(args.domains.split(","), store)
        bus = EventBus(redis, keyspace, producer="worker")
        config = RunnerConfig(consumer_name=f"worker-{os.getpid()}", block_ms=20)
        return await run_actors(actors, redis, keyspace, bus, config)
    finally:
        await store.stop()
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--domains", required=True)
    return asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
