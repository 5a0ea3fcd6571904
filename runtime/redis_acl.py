"""A Redis ACL file in which each domain's user touches only what is its own.

Redis is the trust boundary: a process that can write any key can forge any domain's inputs
or state. With this file each domain connects as its own user (``redis://<domain>:<password>@
host:port/0``, or ``rediss://`` for TLS) and may

- read its *inputs* (and run its consumer group on them), never append to them;
- append to its *outputs* and the trace index;
- write its own state, processed marks, dead letters and heartbeat;
- read the policy (analytics, whose guard asks for DEFENSIVE, may also write it);
- read its state epoch (bumped by a state repair).

The consumer-group commands and the runner's commit script are allowed on the input streams
through an ACL *selector* that lists no command able to add an entry: inside the commit
script each call is checked again, so XACK passes and an XADD to an input would not.
The ``control_plane`` user may read and write the whole namespace (it serves policy writes,
redrives, replays and state repairs) but runs no dangerous command (FLUSHALL, CONFIG, ...).

Passwords are stored as SHA-256 hashes (``#<hex>``), so the file holds no secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime.adapters.redis.runner import state_key
from runtime.core.keys import Keyspace

CONTROL_PLANE_USER = "control_plane"
POLICY_WRITERS = frozenset({"analytics"})

# Consumer-group work on an input stream, and the runner's commit script: nothing that adds.
_CONSUMER_COMMANDS = (
    "+xreadgroup +xack +xgroup|create +xclaim +xautoclaim +xpending +xinfo|groups +xrange "
    "+xrevrange +evalsha +eval +script|load +script|exists"
)
_COMMON_COMMANDS = "+@all -@dangerous +info"


@dataclass(frozen=True, slots=True)
class DomainStreams:
    """The event types one domain reads and writes."""

    inputs: Sequence[str]
    outputs: Sequence[str]


def password_hash(password: str) -> str:
    """The ACL file form of a password: ``#`` and its SHA-256."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def domain_rules(keyspace: Keyspace, domain: str, streams: DomainStreams) -> str:
    """The ACL rules of one domain's user (everything after ``user <name> on <password>``)."""
    own = [
        *(f"~{keyspace.stream(t)}" for t in streams.outputs),
        f"~{keyspace.trace('*')}",
        *_state_keys(keyspace, domain),
        f"~{keyspace.processed(domain)}:*",
        f"~{keyspace.dlq(domain)}",
        f"~{keyspace.heartbeat(domain)}",
        f"%R~{keyspace.state_epoch(domain)}",
        f"~{keyspace.lease(domain)}",
        f"~{keyspace.lease(domain)}.p*",
        f"~{keyspace.fencing_tokens()}",
        f"~{keyspace.trace_registry()}",
    ]
    policy = [keyspace.policy(), keyspace.policy_history(), keyspace.stream("policy.updated")]
    access = "~" if domain in POLICY_WRITERS else "%R~"
    own.extend(f"{access}{key}" for key in policy)
    rules = ["resetkeys", "resetchannels", "-@all", _COMMON_COMMANDS, *own]
    if streams.inputs:
        consumer_keys = [
            *(f"%RW~{keyspace.stream(t)}" for t in streams.inputs),
            f"~{keyspace.dlq(domain)}",
            f"~{keyspace.processed(domain)}:*",
            *_state_keys(keyspace, domain),
        ]
        rules.append(f"({_CONSUMER_COMMANDS} {' '.join(consumer_keys)})")
    return " ".join(rules)


def _state_keys(keyspace: Keyspace, domain: str) -> list[str]:
    """The domain's state key, and those of its partitions (``<key>.p<i>of<N>``)."""
    key = state_key(keyspace, domain)
    return [f"~{key}", f"~{key}.p*"]


def control_plane_rules(keyspace: Keyspace) -> str:
    return f"resetkeys resetchannels -@all {_COMMON_COMMANDS} ~{keyspace.pattern()}"


def acl_file(
    keyspace: Keyspace,
    domains: Mapping[str, DomainStreams],
    passwords: Mapping[str, str],
) -> str:
    """The whole ACL file: a PING-only default user, one user per domain, the control plane.

    ``passwords`` maps each user to its password; a user without one gets the placeholder
    ``#<sha256-of-its-password>`` to fill in.
    """

    def secret(user: str) -> str:
        password = passwords.get(user)
        return password_hash(password) if password else f"#<sha256-of-{user}-password>"

    # The default user (no password) may only PING: health probes work, nothing else does.
    lines = ["user default on nopass resetkeys resetchannels -@all +ping"]
    for domain, streams in sorted(domains.items()):
        lines.append(f"user {domain} on {secret(domain)} {domain_rules(keyspace, domain, streams)}")
    lines.append(
        f"user {CONTROL_PLANE_USER} on {secret(CONTROL_PLANE_USER)} {control_plane_rules(keyspace)}"
    )
    return "\n".join(lines) + "\n"


def redis_access_denied(exc: Exception) -> str:
    """What to tell a person whose Redis user was refused (never the URL: it holds a password)."""
    return (
        f"Redis refused this process's user ({type(exc).__name__}: {exc}). Check the user and "
        "password in --redis-url / REDIS_URL (redis://USER:PASSWORD@HOST:PORT/0, rediss:// for "
        "TLS) and that the ACL file grants this domain its keys: quantum redis-acl prints one"
    )
