"""The operator token a server makes for itself when none is configured.

Writes always need an operator token. With no ``QUANTUM_TOKENS``/``QUANTUM_TOKENS_FILE``, the
server creates a random one at start and writes it to ``<state dir>/operator.token``, readable
by its owner only (0600), so that ``quantumctl`` run by the same user on the same machine finds
it and nothing needs to be set by hand; any other local process cannot read it and gets the
anonymous *viewer* role (reads only, on loopback). Each start replaces the token: a restart
revokes the old one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from control_plane.config import ConfigError

# quantumctl reads the same file name (clients/control_client.py LOCAL_TOKEN_FILE).
LOCAL_TOKEN_FILE = "operator.token"
LOCAL_PRINCIPAL = "local"


def create_local_token(state_dir: Path) -> tuple[str, Path]:
    """A fresh random token, written atomically to ``state_dir``/operator.token (0600)."""
    token = secrets.token_urlsafe(32)
    path = state_dir / LOCAL_TOKEN_FILE
    temporary = state_dir / f".{LOCAL_TOKEN_FILE}.{os.getpid()}.tmp"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        temporary.unlink(missing_ok=True)
        # O_EXCL and mode 0600 from the start: never a moment where others may read it.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the local operator token to {path}: {exc.strerror}; make the state "
            "directory writable (--state-dir), or configure tokens with QUANTUM_TOKENS"
        ) from exc
    return token, path
