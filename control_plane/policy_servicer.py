"""PolicyService over the PolicyStore: reads from its cache, writes as compare-and-set.

Every write names the caller (``<role>:<name>`` of the bearer token) as ``changed_by``, so
the history says who did what. Store errors become rich statuses with request field paths
(``policy.normal.max_leverage``) so a client can point at the bad input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import grpc
from grpc import aio
from quantum.control.v1 import policy_service_pb2 as pb
from quantum.control.v1 import policy_service_pb2_grpc as pb_grpc
from quantum.events.v1 import policy_pb2

from control_plane.auth import current_principal
from control_plane.entry_ids import positive_int
from control_plane.errors import (
    ControlPlaneError,
    FieldViolation,
    Reason,
    bad_field,
    invalid_argument,
)
from control_plane.stalled_writes import STALLED_WRITE_GRACE_S, StalledWriteGuard
from runtime.core.policy.changes import FIELD_PATHS, LIMIT_FIELDS, READ_ONLY, changed_fields
from runtime.core.policy.codec import policy_to_proto
from runtime.core.policy.errors import PolicyValidationError
from runtime.core.policy.history import PolicyChangeRecord, record_to_proto
from runtime.core.policy.model import Policy

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MODE_FIELDS = ("aggressive", "normal", "defensive")
# Request fields the store's violations may name as they are.
_TOP_LEVEL = frozenset({"reason", "changed_by", "update_mask", "page_size", "expected_version"})


class PolicyBackend(Protocol):
    """What the servicer needs of the PolicyStore (runtime.adapters.redis.policy_store)."""

    def get_policy(self) -> Policy: ...

    async def update(
        self,
        changes: Mapping[str, object],
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy: ...

    async def history(
        self, page_size: int = 50, before_version: int | None = None
    ) -> list[PolicyChangeRecord]: ...

    def subscribe(self, *, include_current: bool = True) -> AsyncIterator[Policy]: ...


def _request_violations(
    error: PolicyValidationError, prefix: str, top_level: frozenset[str] = _TOP_LEVEL
) -> ControlPlaneError:
    violations = [
        FieldViolation(v.field if v.field in top_level else f"{prefix}{v.field}", v.description)
        for v in error.violations
    ]
    return invalid_argument(str(error), violations, Reason.POLICY_INVALID)


def _expected_version(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise bad_field("expected_version", "must be a version (1 or more), or unset")
    return value


def mask_changes(policy: policy_pb2.Policy, paths: list[str]) -> dict[str, object]:
    """The store's change mapping for a field mask over ``policy``; INVALID_ARGUMENT if bad."""
    if not paths:
        raise bad_field("update_mask", "names no field; list the paths to change")
    changes: dict[str, object] = {}
    violations: list[FieldViolation] = []
    for index, raw in enumerate(paths):
        path = raw.removeprefix("policy.")
        where = f"update_mask.paths[{index}]"
        if path == "mode":
            changes["mode"] = int(policy.mode)
        elif path == "trading_state":
            changes["trading_state"] = int(policy.trading_state)
        elif path in _MODE_FIELDS:
            limits = getattr(policy, path)
            for name in LIMIT_FIELDS:
                changes[f"{path}.{name}"] = _limit_value(limits, name)
        elif path in FIELD_PATHS:
            mode, _, name = path.partition(".")
            changes[path] = _limit_value(getattr(policy, mode), name)
        elif path in READ_ONLY:
            violations.append(FieldViolation(where, f"{raw!r} is set by the server"))
        else:
            violations.append(
                FieldViolation(
                    where,
                    f"{raw!r} is not a policy field; use mode, trading_state, "
                    "<aggressive|normal|defensive> or <aggressive|normal|defensive>.<limit>",
                )
            )
    if violations:
        raise invalid_argument("the update mask names fields that cannot be set", violations)
    return changes


def _limit_value(limits: policy_pb2.ModeLimits, name: str) -> object:
    value = getattr(limits, name)
    return list(value) if name == "allowed_symbols" else value


def synthesized_change(old: Policy | None, new: Policy) -> pb.PolicyChange:
    """A change record built from two policies, when the history cannot be read."""
    change = pb.PolicyChange(
        version=new.version,
        previous_version=old.version if old is not None else 0,
        changed_by=new.updated_by,
        reason=new.reason,
        changed_fields=list(changed_fields(old, new)),
        new_policy=policy_to_proto(new),
    )
    if old is not None:
        change.old_policy.CopyFrom(policy_to_proto(old))
    if new.updated_at is not None:
        change.changed_at.FromDatetime(new.updated_at)
    return change


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    def __init__(
        self, store: PolicyBackend, *, stalled_write_grace_s: float = STALLED_WRITE_GRACE_S
    ) -> None:
        self._store = store
        self.stalled_write_grace_s = stalled_write_grace_s
        self._cached: tuple[Policy, pb.GetPolicyResponse] | None = None

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetPolicyResponse:
        policy = self._store.get_policy()
        cached = self._cached
        if cached is not None and cached[0] is policy:
            return cached[1]
        response = pb.GetPolicyResponse(policy=policy_to_proto(policy))
        self._cached = (policy, response)
        return response

    async def SwitchMode(
        self, request: pb.SwitchModeRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.SwitchModeResponse:
        if request.mode == policy_pb2.RISK_MODE_UNSPECIFIED:
            raise bad_field("mode", "must be AGGRESSIVE, NORMAL or DEFENSIVE")
        expected = _expected_version(
            request.expected_version if request.HasField("expected_version") else None
        )
        try:
            policy = await self._store.update(
                {"mode": int(request.mode)},
                expected_version=expected,
                changed_by=current_principal().changed_by,
                reason=request.reason,
            )
        except PolicyValidationError as error:
            raise _request_violations(error, "", _TOP_LEVEL | {"mode"}) from error
        return pb.SwitchModeResponse(policy=policy_to_proto(policy))

    async def UpdatePolicy(
        self, request: pb.UpdatePolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.UpdatePolicyResponse:
        changes = mask_changes(request.policy, list(request.update_mask.paths))
        expected = _expected_version(
            request.expected_version if request.HasField("expected_version") else None
        )
        try:
            policy = await self._store.update(
                changes,
                expected_version=expected,
                changed_by=current_principal().changed_by,
                reason=request.reason,
            )
        except PolicyValidationError as error:
            raise _request_violations(error, "policy.") from error
        return pb.UpdatePolicyResponse(policy=policy_to_proto(policy))

    async def ListPolicyHistory(
        self, request: pb.ListPolicyHistoryRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListPolicyHistoryResponse:
        if request.page_size < 0:
            raise bad_field("page_size", "must be 0 (the default, 50) or positive")
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before: int | None = None
        if request.page_token:
            before = positive_int(request.page_token, 2**63 - 1)
            if before is None:
                raise bad_field("page_token", "is not a token from a previous response")
        records = await self._store.history(page_size, before)
        more = len(records) == page_size and records[-1].version > 1
        return pb.ListPolicyHistoryResponse(
            changes=[record_to_proto(r) for r in records],
            next_page_token=str(records[-1].version) if more else "",
        )

    async def WatchPolicy(
        self, request: pb.WatchPolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchPolicyResponse]:
        resume = request.after_version if request.HasField("after_version") else None
        if resume is not None and resume < 0:
            raise bad_field("after_version", "must be 0 or a version, or unset")
        subscription = self._store.subscribe(include_current=True)
        # A watcher that stops reading is cut off: its write would otherwise block for good.
        stall = StalledWriteGuard("WatchPolicy", self.stalled_write_grace_s)
        try:
            # The first item comes at once and registers the subscription, so no change
            # made while the history is read below can be missed.
            current = await anext(subscription)
            if resume is None:
                with stall:
                    yield pb.WatchPolicyResponse(policy=policy_to_proto(current))
                last: Policy | int = current
            else:
                if resume > current.version:
                    raise ControlPlaneError(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"after_version {resume} is above the current policy version "
                        f"{current.version}; resume from a version you were sent, or leave "
                        "after_version unset to start from the current policy",
                        Reason.POLICY_VERSION_AHEAD,
                        {"after_version": str(resume), "current_version": str(current.version)},
                    )
                last = resume
                for change in await self._changes_between(resume, current.version):
                    with stall:
                        yield pb.WatchPolicyResponse(policy=change.new_policy, change=change)
                    last = change.version
                if isinstance(last, int) and last < current.version:
                    # The history has a gap (trimmed or lost): the caller still gets the
                    # policy in force, as a snapshot without a change record.
                    with stall:
                        yield pb.WatchPolicyResponse(policy=policy_to_proto(current))
                    last = current
            async for policy in subscription:
                last_version = last if isinstance(last, int) else last.version
                if policy.version <= last_version:
                    continue
                changes = await self._changes_between(last_version, policy.version)
                if not changes or changes[-1].version != policy.version:
                    previous = last if isinstance(last, Policy) else None
                    changes = [synthesized_change(previous, policy)]
                for change in changes:
                    with stall:
                        yield pb.WatchPolicyResponse(policy=change.new_policy, change=change)
                last = policy
        finally:
            await subscription.aclose()  # type: ignore[attr-defined]

    async def _changes_between(self, after: int, upto: int) -> list[pb.PolicyChange]:
        """History records with after < version <= upto, oldest first."""
        if upto <= after:
            return []
        found: list[pb.PolicyChange] = []
        before = upto + 1
        while before - 1 > after:
            records = await self._store.history(MAX_PAGE_SIZE, before)
            if not records:
                break
            found.extend(record_to_proto(r) for r in records if r.version > after)
            if records[-1].version <= after + 1:
                break
            before = records[-1].version
        found.sort(key=lambda change: change.version)
        return found
