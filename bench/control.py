"""``python -m bench control``: the control plane's read paths under load.

Prints ``get_policy_rps`` (64 concurrent callers on one channel), ``get_policy_p99_ms`` (one
caller, one call at a time) and ``get_trace_p99_ms`` (one caller, random traces of a trace
index holding 1,000,000 events). The server runs in its own process, as in production,
with bearer-token auth on, against a private redis-server that is stopped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from grpc import aio
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1 import trace_service_pb2 as trace_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.control.v1.trace_service_pb2_grpc import TraceServiceStub
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick

from runtime.core.envelope import seal
from runtime.core.ids import new_event_id, new_trace_id
from runtime.core.keys import Keyspace
from runtime.core.redis_server import free_port, start_redis_server

NAMESPACE = "bench-control"


def _log(message: str) -> None:
    print(f"bench control: {message}", file=sys.stderr, flush=True)


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


async def fill_trace_index(url: str, events: int, per_trace: int) -> list[str]:
    """``events`` envelopes in traces of ``per_trace`` events; returns the trace ids."""
    keyspace = Keyspace(NAMESPACE)
    template = seal(MarketTick(symbol="BTC-USD", price="100.25", sequence=1), producer="bench")
    redis = aioredis.Redis.from_url(url)
    trace_ids: list[str] = []
    try:
        pipe = redis.pipeline(transaction=False)
        queued = 0
        for _ in range(events // per_trace):
            trace_id = new_trace_id()
            trace_ids.append(trace_id)
            items = []
            for _ in range(per_trace):
                envelope = Envelope()
                envelope.CopyFrom(template)
                envelope.event_id = new_event_id()
                envelope.trace_id = trace_id
                items.append(envelope.SerializeToString())
            pipe.rpush(keyspace.trace(trace_id), *items)
            queued += 1
            if queued == 2000:
                await pipe.execute()
                queued = 0
        if queued:
            await pipe.execute()
    finally:
        await redis.aclose()
    return trace_ids


def floor_server(port: int) -> None:
    """A grpc.aio server whose GetPolicy does nothing: the stack's ceiling on this machine."""
    from quantum.control.v1.policy_service_pb2_grpc import (
        PolicyServiceServicer,
        add_PolicyServiceServicer_to_server,
    )

    from runtime.adapters.redis.host import install_uvloop

    class Trivial(PolicyServiceServicer):
        async def GetPolicy(
            self, request: policy_pb.GetPolicyRequest, context: Any
        ) -> policy_pb.GetPolicyResponse:
            return policy_pb.GetPolicyResponse()

    async def serve() -> None:
        server = aio.server()
        add_PolicyServiceServicer_to_server(Trivial(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    install_uvloop()
    asyncio.run(serve())


def start_server(url: str, port: int, token: str, state_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, QUANTUM_TOKENS=f"bench:viewer:{token}")
    env.pop("QUANTUM_TOKENS_FILE", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from control_plane.server import main; sys.exit(main(sys.argv[1:]))",
            "--redis-url",
            url,
            "--namespace",
            NAMESPACE,
            "--state-dir",
            str(state_dir),
            "--grpc-addr",
            f"127.0.0.1:{port}",
            "--metrics-addr",
            "",
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


async def wait_ready(stub: PolicyServiceStub, metadata: Any, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            await stub.GetPolicy(policy_pb.GetPolicyRequest(), metadata=metadata, timeout=1.0)
            return
        except aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def throughput(address: str, metadata: Any, args: argparse.Namespace) -> float:
    """GetPolicy calls per second from ``args.callers`` concurrent callers.

    The callers share ``args.channels`` channels (connections), as a pooled client would.
    """
    channels = [aio.insecure_channel(address) for _ in range(args.channels)]
    try:
        stubs = [PolicyServiceStub(channel) for channel in channels]
        for stub in stubs:
            await wait_ready(stub, metadata)
        per_caller = args.throughput_calls // args.callers
        request = policy_pb.GetPolicyRequest()

        async def caller(stub: PolicyServiceStub) -> None:
            for _ in range(per_caller):
                await stub.GetPolicy(request, metadata=metadata, timeout=5.0)

        callers = [stubs[i % len(stubs)] for i in range(args.callers)]
        await asyncio.gather(*(caller(stub) for stub in callers))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(caller(stub) for stub in callers))
        return per_caller * args.callers / (time.perf_counter() - started)
    finally:
        for channel in channels:
            await channel.close()


async def measure(
    address: str, token: str, trace_ids: list[str], args: argparse.Namespace
) -> dict[str, float]:
    metadata = (("authorization", f"Bearer {token}"),)
    async with aio.insecure_channel(address) as channel:
        policy = PolicyServiceStub(channel)
        traces = TraceServiceStub(channel)
        await wait_ready(policy, metadata)
        request = policy_pb.GetPolicyRequest()

        # One caller, one call at a time: latency.
        latencies: list[float] = []
        for _ in range(args.latency_calls):
            started = time.perf_counter()
            await policy.GetPolicy(request, metadata=metadata, timeout=5.0)
            latencies.append((time.perf_counter() - started) * 1000)

        rps = await throughput(address, metadata, args)

        trace_latencies: list[float] = []
        for _ in range(args.latency_calls):
            trace_request = trace_pb.GetTraceRequest(trace_id=random.choice(trace_ids))
            started = time.perf_counter()
            response = await traces.GetTrace(trace_request, metadata=metadata, timeout=5.0)
            trace_latencies.append((time.perf_counter() - started) * 1000)
            assert len(response.events) == args.events_per_trace
    return {
        "get_policy_rps": round(rps),
        "get_policy_p50_ms": round(statistics.median(latencies), 3),
        "get_policy_p99_ms": round(_percentile(latencies, 99), 3),
        "get_trace_p50_ms": round(statistics.median(trace_latencies), 3),
        "get_trace_p99_ms": round(_percentile(trace_latencies, 99), 3),
    }


def run(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench control")
    parser.add_argument("--trace-events", type=int, default=1_000_000)
    parser.add_argument("--events-per-trace", type=int, default=10)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--throughput-calls", type=int, default=32_000)
    parser.add_argument("--latency-calls", type=int, default=2_000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--no-floor", action="store_true", help="skip the trivial-server baseline")
    args = parser.parse_args(argv)

    from runtime.adapters.redis.host import install_uvloop

    install_uvloop()
    redis_server = start_redis_server()
    server: subprocess.Popen[bytes] | None = None
    try:
        _log(f"filling the trace index with {args.trace_events:,} events")
        started = time.perf_counter()
        trace_ids = asyncio.run(
            fill_trace_index(redis_server.url, args.trace_events, args.events_per_trace)
        )
        _log(f"filled in {time.perf_counter() - started:.1f} s; starting the server")
        token = secrets.token_urlsafe(32)
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="bench-control-") as state_dir:
            server = start_server(redis_server.url, port, token, Path(state_dir))
            results = asyncio.run(measure(f"127.0.0.1:{port}", token, trace_ids, args))
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        if not args.no_floor:
            _log("measuring the floor: a grpc.aio server whose GetPolicy does nothing")
            port = free_port()
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from bench.control import floor_server; floor_server({port})",
                ],
                stdin=subprocess.DEVNULL,
            )
            results["baseline_trivial_server_rps"] = round(
                asyncio.run(throughput(f"127.0.0.1:{port}", (), args))
            )
            server.kill()
            server.wait(10)
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(10)
        redis_server.stop()
    return {
        **results,
        "trace_index_events": len(trace_ids) * args.events_per_trace,
        "callers": args.callers,
        "channels": args.channels,
        "cpus": os.cpu_count(),
        "targets": {"get_policy_rps": 5000, "get_policy_p99_ms": 2.0, "get_trace_p99_ms": 5.0},
    }
