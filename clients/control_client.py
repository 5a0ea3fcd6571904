"""The Python client of the control plane: typed calls with deadlines, tokens and retries.

    async with ControlClient("127.0.0.1:50051", token=os.environ["QUANTUM_TOKEN"]) as client:
        policy = await client.get_policy()
        await client.switch_mode("DEFENSIVE", expected_version=policy.version, reason="drill")

Every unary call has a deadline (``timeout``, 5 s by default) and is retried with capped
exponential backoff while the server answers UNAVAILABLE (restarting, Redis lost). Writes
are safe to retry: without ``expected_version`` a repeated write changes nothing more (the
store writes nothing when the value is already in force); with it, a retry that finds its own
earlier attempt committed is recognised and returned instead of a spurious ABORTED.
Failures raise ``ControlError`` carrying the status code and the google.rpc details.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1 import replay_service_pb2 as replay_pb
from quantum.control.v1 import runtime_service_pb2 as runtime_pb
from quantum.control.v1 import trace_service_pb2 as trace_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.control.v1.replay_service_pb2_grpc import ReplayServiceStub
from quantum.control.v1.runtime_service_pb2_grpc import RuntimeServiceStub
from quantum.control.v1.stored_event_pb2 import StoredEvent
from quantum.control.v1.trace_service_pb2_grpc import TraceServiceStub
from quantum.events.v1 import policy_pb2

from clients.trace_context import current_trace_metadata
from clients.wire_errors import ErrorDetails, FieldViolation, details_of

T = TypeVar("T")

DEFAULT_ADDR = "127.0.0.1:50051"
# The operator token a server without configured tokens writes to its state directory
# (control_plane/local_token.py names the same file); readable by its owner only.
LOCAL_TOKEN_FILE = "operator.token"
# The limit fields and the modes carrying them, read from the generated descriptors so a field
# added to ModeLimits is settable here without a hand-kept copy.
_LIMIT_FIELDS: Mapping[str, FieldDescriptor] = {
    f.name: f for f in policy_pb2.ModeLimits.DESCRIPTOR.fields
}
_LIMIT_MODES = frozenset(
    f.name
    for f in policy_pb2.Policy.DESCRIPTOR.fields
    if f.message_type is not None and f.message_type.full_name == "quantum.events.v1.ModeLimits"
)
_INT_CPP_TYPES = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)


class ControlError(Exception):
    """A failed call: the status code, the message, and the rich details."""

    def __init__(self, details: ErrorDetails) -> None:
        self.details = details
        self.code = details.code
        self.reason = details.reason
        self.violations: tuple[FieldViolation, ...] = details.violations
        text = f"{details.code.name}: {details.message}"
        if details.violations:
            text += (
                " (" + "; ".join(f"{v.field}: {v.description}" for v in details.violations) + ")"
            )
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """Trust ``ca`` for the server; with ``cert`` and ``key``, present a client certificate."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def mode_number(mode: str | int) -> policy_pb2.RiskMode.ValueType:
    """A RiskMode from "defensive", "RISK_MODE_DEFENSIVE" or 3."""
    if isinstance(mode, int):
        return policy_pb2.RiskMode.ValueType(mode)
    name = mode.strip().upper()
    return policy_pb2.RiskMode.Value(name if name.startswith("RISK_MODE_") else f"RISK_MODE_{name}")


def trading_state_number(state: str | int) -> policy_pb2.TradingState.ValueType:
    if isinstance(state, int):
        return policy_pb2.TradingState.ValueType(state)
    name = state.strip().upper()
    return policy_pb2.TradingState.Value(
        name if name.startswith("TRADING_STATE_") else f"TRADING_STATE_{name}"
    )


_WHOLE_NUMBER = re.compile(r"[0-9]{1,10}")


def whole_number(path: str, value: object) -> int:
    """A count as people type it: ASCII digits only (``int()`` would also take " 5", "1_000"
    and non-ASCII digits, and send a number the person did not mean)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    if not text.isascii() or _WHOLE_NUMBER.fullmatch(text) is None:
        raise ValueError(f"{path}: {text!r} is not a whole number (ASCII digits, for example 5)")
    return int(text)


def policy_update(changes: Mapping[str, object]) -> tuple[policy_pb2.Policy, FieldMask]:
    """A Policy carrying ``changes`` (path -> value) and the mask naming them.

    Values may be given as people type them: "2.5", 3, "DEFENSIVE", ["BTC-USD", "ETH-USD"].
    Unknown paths are passed through in the mask so the server names them in its answer.
    """
    policy = policy_pb2.Policy()
    paths: list[str] = []
    for path, value in changes.items():
        paths.append(path)
        if path == "mode":
            policy.mode = mode_number(value)  # type: ignore[arg-type]
        elif path == "trading_state":
            policy.trading_state = trading_state_number(value)  # type: ignore[arg-type]
        else:
            mode, _, name = path.partition(".")
            limit = _LIMIT_FIELDS.get(name)
            if mode not in _LIMIT_MODES or limit is None:
                continue
            limits = getattr(policy, mode)
            if limit.is_repeated:
                items = value.split(",") if isinstance(value, str) else value
                getattr(limits, name)[:] = [str(s).strip() for s in items]  # type: ignore[attr-defined]
            elif limit.cpp_type in _INT_CPP_TYPES:
                setattr(limits, name, whole_number(path, value))
            else:
                setattr(limits, name, str(value))  # the server reads it with its strict parser
    return policy, FieldMask(paths=paths)


def local_token(state_dir: Path) -> str | None:
    """The local server's operator token from ``state_dir``, or None when there is none.

    Only a private file (a regular file, not readable by group or others) is trusted: a token
    anyone could have read or planted is not one to send.
    """
    path = state_dir / LOCAL_TOKEN_FILE
    try:
        info = path.lstat()
        if not path.is_file() or path.is_symlink() or info.st_mode & 0o077:
            return None
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token if len(token) >= 16 and token.isascii() and token.isprintable() else None


def event_range(
    event_type: str,
    *,
    start_id: str = "",
    end_id: str = "",
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    limit: int = 0,
) -> replay_pb.EventRange:
    """An EventRange message from keyword arguments."""
    message = replay_pb.EventRange(
        event_type=event_type, start_id=start_id, end_id=end_id, limit=limit
    )
    if start_time is not None:
        message.start_time.CopyFrom(_timestamp(start_time))
    if end_time is not None:
        message.end_time.CopyFrom(_timestamp(end_time))
    return message


def _timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


class ControlClient:
    """An async client of every control-plane service."""

    def __init__(
        self,
        target: str = DEFAULT_ADDR,
        *,
        token: str | None = None,
        tls: TlsOptions | None = None,
        timeout: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.1,
        channel: aio.Channel | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        channel_options = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            *options,
        ]
        if tls is not None and tls.server_name:
            channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
        if channel is not None:
            self.channel = channel
        elif tls is not None:
            self.channel = aio.secure_channel(target, tls.credentials(), options=channel_options)
        else:
            self.channel = aio.insecure_channel(target, options=channel_options)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.policy = PolicyServiceStub(self.channel)
        self.traces = TraceServiceStub(self.channel)
        self.replay_service = ReplayServiceStub(self.channel)
        self.runtime = RuntimeServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The token plus the caller's trace context, so the server's logs join its trace."""
        return (*self._metadata, *current_trace_metadata())

    async def _unary(self, call: Callable[..., Awaitable[T]], request: Any) -> T:
        attempt = 0
        while True:
            try:
                return await call(request, metadata=self.metadata(), timeout=self.timeout)
            except aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
                    raise ControlError(details_of(error)) from None
            delay = min(self.backoff_s * 2**attempt, 2.0)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            attempt += 1

    async def _write(
        self, call: Callable[..., Awaitable[Any]], request: Any, expected_version: int | None
    ) -> policy_pb2.Policy:
        """A policy write, retried on UNAVAILABLE like any call.

        A retry can meet its own earlier attempt, committed before the connection dropped:
        a compare-and-set then answers ABORTED although the change is in. Reading the policy
        back tells the two apart: the version right after ours, with our reason, is our write.
        """
        attempts = 0

        async def counted(message: Any, **kwargs: Any) -> Any:
            nonlocal attempts
            attempts += 1
            return await call(message, **kwargs)

        try:
            response = await self._unary(counted, request)
        except ControlError as error:
            if error.code != grpc.StatusCode.ABORTED or attempts < 2 or expected_version is None:
                raise
            current = await self.get_policy()
            if current.version == expected_version + 1 and current.reason == request.reason:
                return current
            raise
        policy: policy_pb2.Policy = response.policy
        return policy

    async def _stream(self, call: Callable[..., Any], request: Any) -> AsyncIterator[Any]:
        stream = call(request, metadata=self.metadata())
        try:
            async for message in stream:
                yield message
        except aio.AioRpcError as error:
            raise ControlError(details_of(error)) from None
        finally:
            stream.cancel()

    # -- policy -----------------------------------------------------------------------------

    async def get_policy(self) -> policy_pb2.Policy:
        response: policy_pb.GetPolicyResponse = await self._unary(
            self.policy.GetPolicy, policy_pb.GetPolicyRequest()
        )
        return response.policy

    async def switch_mode(
        self, mode: str | int, *, reason: str, expected_version: int | None = None
    ) -> policy_pb2.Policy:
        request = policy_pb.SwitchModeRequest(mode=mode_number(mode), reason=reason)
        if expected_version is not None:
            request.expected_version = expected_version
        return await self._write(self.policy.SwitchMode, request, expected_version)

    async def update_policy(
        self, changes: Mapping[str, object], *, reason: str, expected_version: int | None = None
    ) -> policy_pb2.Policy:
        """Change the fields named in ``changes``, e.g. ``{"normal.max_leverage": "2.5"}``."""
        policy, mask = policy_update(changes)
        request = policy_pb.UpdatePolicyRequest(policy=policy, update_mask=mask, reason=reason)
        if expected_version is not None:
            request.expected_version = expected_version
        return await self._write(self.policy.UpdatePolicy, request, expected_version)

    def watch_policy(
        self, after_version: int | None = None
    ) -> AsyncIterator[policy_pb.WatchPolicyResponse]:
        request = policy_pb.WatchPolicyRequest()
        if after_version is not None:
            request.after_version = after_version
        return self._stream(self.policy.WatchPolicy, request)

    async def policy_history(
        self, page_size: int = 50, page_token: str = ""
    ) -> policy_pb.ListPolicyHistoryResponse:
        return await self._unary(
            self.policy.ListPolicyHistory,
            policy_pb.ListPolicyHistoryRequest(page_size=page_size, page_token=page_token),
        )

    # -- health and runtime ---------------------------------------------------------------

    async def check(
        self, service: str = ""
    ) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        response = await self._unary(
            self.health.Check, health_pb2.HealthCheckRequest(service=service)
        )
        return response.status

    async def system_health(self) -> runtime_pb.GetSystemHealthResponse:
        return await self._unary(self.runtime.GetSystemHealth, runtime_pb.GetSystemHealthRequest())

    async def list_domains(self) -> list[runtime_pb.DomainInfo]:
        response = await self._unary(self.runtime.ListDomains, runtime_pb.ListDomainsRequest())
        return list(response.domains)

    # -- traces ---------------------------------------------------------------------------

    async def get_trace(self, trace_id: str) -> list[StoredEvent]:
        response = await self._unary(
            self.traces.GetTrace, trace_pb.GetTraceRequest(trace_id=trace_id)
        )
        return list(response.events)

    async def follow(
        self,
        *,
        trace_id: str = "",
        event_types: Iterable[str] = (),
        domains: Iterable[str] = (),
        symbols: Iterable[str] = (),
    ) -> AsyncIterator[StoredEvent]:
        request = trace_pb.SubscribeTracesRequest(
            trace_id=trace_id,
            event_types=list(event_types),
            domains=list(domains),
            symbols=list(symbols),
        )
        async for response in self._stream(self.traces.SubscribeTraces, request):
            yield response.event

    # -- replay and dead letters ----------------------------------------------------------

    async def read_events(self, event_range_: replay_pb.EventRange) -> AsyncIterator[StoredEvent]:
        request = replay_pb.ReadEventsRequest(range=event_range_)
        async for response in self._stream(self.replay_service.ReadEvents, request):
            yield response.event

    def replay(
        self, domain: str, event_range_: replay_pb.EventRange, *, publish: bool = False
    ) -> AsyncIterator[replay_pb.ReplayToDomainResponse]:
        request = replay_pb.ReplayToDomainRequest(
            domain=domain, range=event_range_, publish=publish
        )
        return self._stream(self.replay_service.ReplayToDomain, request)

    async def dead_letters(
        self, domain: str, page_size: int = 50, page_token: str = ""
    ) -> replay_pb.ListDeadLettersResponse:
        return await self._unary(
            self.replay_service.ListDeadLetters,
            replay_pb.ListDeadLettersRequest(
                domain=domain, page_size=page_size, page_token=page_token
            ),
        )

    async def redrive(
        self, domain: str, entry_ids: Iterable[str] = ()
    ) -> replay_pb.RedriveDeadLettersResponse:
        return await self._unary(
            self.replay_service.RedriveDeadLetters,
            replay_pb.RedriveDeadLettersRequest(domain=domain, entry_ids=list(entry_ids)),
        )

    # -- state repair ---------------------------------------------------------------------

    async def repair_state(
        self,
        domain: str,
        *,
        reset: bool,
        reason: str,
        dry_run: bool = False,
        partition: int = 0,
        partitions: int = 1,
        deadline_s: float = 120.0,
    ) -> replay_pb.RepairDomainStateResponse:
        """Rebuild ``domain``'s state from its retained inputs (or reset it); operator role.

        A rebuild replays every retained input, so its deadline is ``deadline_s``, not the
        client's per-call default. Not retried: a repair is not a read.
        """
        request = replay_pb.RepairDomainStateRequest(
            domain=domain,
            mode=replay_pb.REPAIR_MODE_RESET if reset else replay_pb.REPAIR_MODE_REBUILD,
            reason=reason,
            dry_run=dry_run,
            partition=partition,
            partitions=partitions,
        )
        try:
            response: replay_pb.RepairDomainStateResponse = (
                await self.replay_service.RepairDomainState(
                    request, metadata=self.metadata(), timeout=deadline_s
                )
            )
        except aio.AioRpcError as error:
            raise ControlError(details_of(error)) from None
        return response

    async def state_repairs(
        self, domain: str = "", page_size: int = 50
    ) -> list[replay_pb.StateRepair]:
        response = await self._unary(
            self.replay_service.ListStateRepairs,
            replay_pb.ListStateRepairsRequest(domain=domain, page_size=page_size),
        )
        return list(response.repairs)

    async def purge(
        self, domain: str, entry_ids: Iterable[str] = (), *, purge_all: bool = False
    ) -> replay_pb.PurgeDeadLettersResponse:
        """Delete dead letters for good (operator role): the named ones, or with
        ``purge_all`` every letter of the domain."""
        return await self._unary(
            self.replay_service.PurgeDeadLetters,
            replay_pb.PurgeDeadLettersRequest(
                domain=domain, entry_ids=list(entry_ids), all=purge_all
            ),
        )
