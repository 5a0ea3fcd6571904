"""A worker process for the conformance suite: TickCounter on any engine until SIGTERM.

    python -m tests.conformance.worker ENGINE_URL NAMESPACE CONSUMER PARTITIONS

``PARTITIONS`` is a ``--stream-partitions`` spec ("" for none). Prints "ready" once its runner
started; exits with ``run_on_engine``'s code (0 after a clean drain).
"""

from __future__ import annotations

import asyncio
import sys

from runtime.core.delivery import RunnerConfig
from runtime.core.engine import run_on_engine
from runtime.core.host import install_uvloop
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging
from runtime.core.partitioning import Partitioning
from runtime.engines import EngineSettings, open_engine
from tests.process.actors import TickCounter


async def main(url: str, namespace: str, consumer: str, partitions: str) -> int:
    configure_logging("WARNING")
    engine = open_engine(
        url,
        Keyspace(namespace),
        partitioning=Partitioning.parse(partitions),
        # every output is kept: the test counts them all
        settings=EngineSettings(maxlen=1_000_000, retain=1_000_000),
    )
    config = RunnerConfig(
        consumer_name=consumer,
        batch_size=200,
        block_ms=100,
        lease_ttl_ms=1_000,  # a restarted worker takes its partition over within a second
        retry_base_ms=10,
        retry_cap_ms=100,
    )

    def ready(_host: object) -> None:
        print("ready", flush=True)

    publisher = engine.publisher(producer=TickCounter.name)
    try:
        return await run_on_engine(engine, [TickCounter()], publisher, config, on_ready=ready)
    finally:
        await engine.close()


if __name__ == "__main__":
    install_uvloop()
    raise SystemExit(asyncio.run(main(*sys.argv[1:5])))
