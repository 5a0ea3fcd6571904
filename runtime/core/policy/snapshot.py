"""The policy snapshot file: the last known policy, kept on local disk for a Redis that lost it.

Written atomically (temporary file, fsync, rename, fsync of the folder), so a crash leaves
the old file or the new one, never half of one. A checksum over the policy catches edits and
bit rot: a file that fails any check raises ``SnapshotCorrupted`` and is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from quantum.events.v1 import policy_pb2

from runtime.core.policy.codec import policy_from_proto, policy_to_proto
from runtime.core.policy.errors import PolicyValidationError, SnapshotCorrupted
from runtime.core.policy.model import Policy

SNAPSHOT_FORMAT = 1


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class SnapshotFile:
    """``<state_dir>/policy-<namespace>.json``: one namespace's last known policy."""

    def __init__(self, state_dir: Path, namespace: str) -> None:
        self.namespace = namespace
        self.path = Path(state_dir) / f"policy-{namespace}.json"
        self._lock = threading.Lock()  # one writer at a time within a process

    def write(self, policy: Policy) -> None:
        """Replace the snapshot with ``policy``, atomically and durably (blocking I/O)."""
        body = json_format.MessageToDict(policy_to_proto(policy), preserving_proto_field_name=True)
        document = {
            "format": SNAPSHOT_FORMAT,
            "namespace": self.namespace,
            "version": policy.version,
            "written_at": datetime.now(UTC).isoformat(),
            "sha256": hashlib.sha256(_canonical(body)).hexdigest(),
            "policy": body,
        }
        data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(
                f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
            )
            try:
                with open(temporary, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
            finally:
                temporary.unlink(missing_ok=True)
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def load(self) -> Policy | None:
        """The snapshot's policy, None when there is no file; ``SnapshotCorrupted`` if bad."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SnapshotCorrupted(self.path, f"cannot be read: {exc}") from exc
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SnapshotCorrupted(self.path, f"not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise SnapshotCorrupted(self.path, "not a JSON object")
        if document.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotCorrupted(
                self.path, f"unknown format {document.get('format')!r} (expected 1)"
            )
        if document.get("namespace") != self.namespace:
            raise SnapshotCorrupted(
                self.path,
                f"written for namespace {document.get('namespace')!r}, not {self.namespace!r}",
            )
        body = document.get("policy")
        if not isinstance(body, dict):
            raise SnapshotCorrupted(self.path, "has no 'policy' object")
        if hashlib.sha256(_canonical(body)).hexdigest() != document.get("sha256"):
            raise SnapshotCorrupted(self.path, "checksum mismatch: the policy was altered")
        try:
            message = json_format.ParseDict(body, policy_pb2.Policy())
            policy = policy_from_proto(message)
        except (json_format.ParseError, PolicyValidationError) as exc:
            raise SnapshotCorrupted(self.path, f"not a valid policy: {exc}") from exc
        if policy.version != document.get("version"):
            raise SnapshotCorrupted(self.path, "the version field disagrees with the policy")
        return policy

    def quarantine(self) -> Path | None:
        """Move a bad snapshot aside (kept for inspection) so the next write starts clean."""
        target = self.path.with_name(
            f"{self.path.name}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
        )
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return None
        return target
