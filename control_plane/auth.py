"""Who is calling: bearer tokens, the roles they carry, and the role each RPC needs.

Tokens come from ``QUANTUM_TOKENS`` (``name:role:token`` entries separated by commas) or
from the file named by ``QUANTUM_TOKENS_FILE`` (the same entries, one per line or comma
separated; ``#`` starts a comment). They are never written in code. A presented token is
compared with every configured one in constant time, so timing reveals nothing about which
characters matched.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from control_plane.errors import ControlPlaneError, Reason

TOKENS_ENV = "QUANTUM_TOKENS"
TOKENS_FILE_ENV = "QUANTUM_TOKENS_FILE"


class Role(enum.IntEnum):
    """Roles in increasing power: an operator may do everything a viewer may."""

    VIEWER = 1
    OPERATOR = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a token."""

    name: str
    role: Role

    @property
    def changed_by(self) -> str:
        """How the policy history names this caller: ``"<role>:<name>"``."""
        return f"{self.role.label}:{self.name}"


# When no tokens are configured (loopback only), callers without a token act as this
# principal: they may read; writes need the server's local operator token (local_token.py).
ANONYMOUS = Principal("anonymous", Role.VIEWER)

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "quantum_principal", default=None
)


def current_principal() -> Principal:
    """The caller of the RPC being served (set by the auth interceptor)."""
    principal = _principal.get()
    if principal is None:
        raise RuntimeError("no principal: the auth interceptor did not run for this call")
    return principal


def set_principal(principal: Principal) -> contextvars.Token[Principal | None]:
    return _principal.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    # A stream closed from another task runs its cleanup in another context; the variable
    # then dies with the call's own task anyway.
    with contextlib.suppress(ValueError):
        _principal.reset(token)


class TokenConfigError(ValueError):
    """The token configuration cannot be read; the message says which entry and why."""


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    secret: bytes


class TokenTable:
    """The configured tokens; ``authenticate`` maps a presented token to its principal."""

    def __init__(
        self,
        entries: Iterable[tuple[str, Role, str]] = (),
        *,
        anonymous: Principal | None = None,
    ) -> None:
        self._entries: list[_Entry] = []
        for name, role, token in entries:
            self._entries.append(_Entry(Principal(name, role), token.encode()))
        # Who a call without a token is (None: such calls are refused).
        self.anonymous = anonymous

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        """True when tokens are configured (and therefore required)."""
        return bool(self._entries)

    def with_local_operator(self, name: str, token: str) -> TokenTable:
        """For a server with no configured tokens: ``token`` is its operator token, and a call
        without one is ANONYMOUS (a viewer)."""
        return TokenTable([(name, Role.OPERATOR, token)], anonymous=ANONYMOUS)

    @classmethod
    def parse(cls, text: str, *, source: str = TOKENS_ENV) -> TokenTable:
        """Parse ``name:role:token`` entries separated by commas or new lines."""
        entries: list[tuple[str, Role, str]] = []
        seen_tokens: set[str] = set()
        lines = [line.split("#", 1)[0] for line in text.splitlines()]
        raw_entries = [part.strip() for line in lines for part in line.split(",")]
        for number, raw in enumerate((e for e in raw_entries if e), start=1):
            parts = raw.split(":", 2)
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise TokenConfigError(
                    f"{source}: entry {number} is not 'name:role:token' "
                    "(three non-empty parts separated by ':')"
                )
            name, role_text, token = (p.strip() for p in parts)
            try:
                role = Role[role_text.upper()]
            except KeyError:
                raise TokenConfigError(
                    f"{source}: entry {number} ({name!r}) has role {role_text!r}; "
                    "use 'viewer' or 'operator'"
                ) from None
            if len(token) < 16:
                raise TokenConfigError(
                    f"{source}: the token of entry {number} ({name!r}) is shorter than 16 "
                    "characters; generate one with `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`"
                )
            if token in seen_tokens:
                raise TokenConfigError(f"{source}: entry {number} ({name!r}) reuses a token")
            seen_tokens.add(token)
            entries.append((name, role, token))
        return cls(entries)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TokenTable:
        """Tokens from ``QUANTUM_TOKENS`` or the file named by ``QUANTUM_TOKENS_FILE``."""
        env = os.environ if env is None else env
        inline = env.get(TOKENS_ENV, "")
        path = env.get(TOKENS_FILE_ENV, "")
        if inline and path:
            raise TokenConfigError(f"set either {TOKENS_ENV} or {TOKENS_FILE_ENV}, not both")
        if path:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise TokenConfigError(
                    f"{TOKENS_FILE_ENV}={path}: cannot read it: {exc.strerror}"
                ) from exc
            return cls.parse(text, source=path)
        return cls.parse(inline)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None. Compares against every entry, always."""
        presented = token.encode()
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.secret):
                found = entry.principal
        return found


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            return parse_bearer(value)
    return None


def parse_bearer(value: str | bytes | None) -> str | None:
    """The token of an ``authorization`` value ``Bearer <token>``; None for anything else."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# The services anyone may call: probes and tooling must work without a token.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# The role each method needs. ReplayToDomain with publish=true additionally needs OPERATOR,
# checked by the servicer (it depends on the body). A method missing here (one added to a
# proto but not yet classified) needs OPERATOR: deny by default, never open a write by accident.
_P, _R, _RT, _T = (
    "/quantum.control.v1.PolicyService/",
    "/quantum.control.v1.ReplayService/",
    "/quantum.control.v1.RuntimeService/",
    "/quantum.control.v1.TraceService/",
)
METHOD_ROLES: Mapping[str, Role] = {
    f"{_P}GetPolicy": Role.VIEWER,
    f"{_P}WatchPolicy": Role.VIEWER,
    f"{_P}ListPolicyHistory": Role.VIEWER,
    f"{_P}SwitchMode": Role.OPERATOR,
    f"{_P}UpdatePolicy": Role.OPERATOR,
    f"{_R}ReadEvents": Role.VIEWER,
    f"{_R}ReplayToDomain": Role.VIEWER,
    f"{_R}ListDeadLetters": Role.VIEWER,
    f"{_R}RedriveDeadLetters": Role.OPERATOR,
    f"{_R}RepairDomainState": Role.OPERATOR,
    f"{_R}ListStateRepairs": Role.VIEWER,
    f"{_R}PurgeDeadLetters": Role.OPERATOR,
    f"{_RT}GetSystemHealth": Role.VIEWER,
    f"{_RT}ListDomains": Role.VIEWER,
    f"{_T}GetTrace": Role.VIEWER,
    f"{_T}SubscribeTraces": Role.VIEWER,
}


def required_role(method: str) -> Role | None:
    """The role ``method`` (``/package.Service/Method``) needs, or None for open methods."""
    service = method.lstrip("/").split("/", 1)[0]
    if service in OPEN_SERVICES:
        return None
    return METHOD_ROLES.get(method, Role.OPERATOR)


def authorize(
    tokens: TokenTable, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
) -> Principal | None:  # the whole check in one call; the server splits it for speed
    """The caller's principal when it may call ``method``; raises ControlPlaneError if not.

    Returns None for open methods. A call without a token is the table's anonymous principal
    when it has one (a server without configured tokens, loopback only), refused otherwise.
    """
    needed = required_role(method)
    if needed is None:
        return None
    return authorize_token(tokens, needed, method, bearer_token(metadata))


def authorize_token(tokens: TokenTable, needed: Role, method: str, token: str | None) -> Principal:
    """The principal behind ``token`` when it holds ``needed``; raises ControlPlaneError."""
    if token is None and tokens.anonymous is not None:
        if tokens.anonymous.role < needed:
            raise ControlPlaneError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} writes, and writes need an operator token: quantumctl on the "
                "server's machine uses the one in the server's state directory "
                "(operator.token); others send 'authorization: Bearer <token>'",
                Reason.TOKEN_MISSING,
                {"required_role": needed.label},
            )
        return tokens.anonymous
    if not tokens.enabled:
        raise ControlPlaneError(
            grpc.StatusCode.UNAUTHENTICATED,
            "this server accepts no tokens; configure QUANTUM_TOKENS",
            Reason.TOKEN_INVALID,
        )
    if token is None:
        raise ControlPlaneError(
            grpc.StatusCode.UNAUTHENTICATED,
            "this call needs a bearer token: send metadata 'authorization: Bearer <token>'",
            Reason.TOKEN_MISSING,
        )
    principal = tokens.authenticate(token)
    if principal is None:
        raise ControlPlaneError(
            grpc.StatusCode.UNAUTHENTICATED,
            "the bearer token is not one of the configured tokens",
            Reason.TOKEN_INVALID,
        )
    require(principal, needed, method)
    return principal


def require(principal: Principal, needed: Role, action: str) -> None:
    """Raise PERMISSION_DENIED unless ``principal`` holds ``needed``."""
    if principal.role < needed:
        raise ControlPlaneError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{action} needs the {needed.label} role; {principal.name!r} is a "
            f"{principal.role.label}",
            Reason.ROLE_INSUFFICIENT,
            {"required_role": needed.label, "role": principal.role.label},
        )
