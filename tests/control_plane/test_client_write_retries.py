"""A write retried after UNAVAILABLE that meets its own committed first attempt succeeds."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc import aio

from clients.control_client import ControlClient, ControlError
from tests.control_plane.conftest import Harness


def _fail_first_switch(client: ControlClient, before_failing: Any) -> None:
    """The first SwitchMode ends UNAVAILABLE after ``before_failing(request, kwargs)`` ran."""
    real = client.policy.SwitchMode
    calls = 0

    async def switch_mode(request: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await before_failing(real, request, kwargs)
            raise aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), "connection reset"
            )
        return await real(request, **kwargs)

    client.policy.SwitchMode = switch_mode  # type: ignore[method-assign]


async def test_a_retry_that_finds_its_own_write_returns_it(harness: Harness) -> None:
    async with ControlClient(
        harness.address, token=harness.operator_token, retries=3, backoff_s=0.01
    ) as client:
        before = await client.get_policy()

        async def commit_then_lose_the_reply(real: Any, request: Any, kwargs: Any) -> None:
            await real(request, **kwargs)

        _fail_first_switch(client, commit_then_lose_the_reply)
        after = await client.switch_mode(
            "DEFENSIVE", expected_version=before.version, reason="drill 41"
        )
    assert after.version == before.version + 1
    assert after.reason == "drill 41"


async def test_a_retry_that_finds_someone_elses_write_is_still_aborted(harness: Harness) -> None:
    async with ControlClient(
        harness.address, token=harness.operator_token, retries=3, backoff_s=0.01
    ) as client:
        before = await client.get_policy()

        async def someone_else_writes_first(real: Any, request: Any, kwargs: Any) -> None:
            other = type(request)(mode=request.mode, reason="someone else")
            other.expected_version = before.version
            await real(other, **kwargs)

        _fail_first_switch(client, someone_else_writes_first)
        with pytest.raises(ControlError) as raised:
            await client.switch_mode(
                "DEFENSIVE", expected_version=before.version, reason="drill 42"
            )
    assert raised.value.code == grpc.StatusCode.ABORTED
