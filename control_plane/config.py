"""Control-plane configuration: addresses, TLS, keepalive, and the safety rule on binding.

The server listens on 127.0.0.1:50051 and serves metrics on 127.0.0.1:9464 unless told
otherwise. It refuses to listen on a non-loopback address while no tokens are configured:
an open control plane on a network could halt trading for anyone who finds it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_GRPC_ADDR = "127.0.0.1:50051"
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"


class ConfigError(ValueError):
    """The configuration cannot be served; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 keepalive: the server pings idle connections, and accepts client pings.

    ``time_s``: ping a connection after this long without activity; ``timeout_s``: close it
    when the ping is not answered within this; ``min_client_ping_interval_s``: clients may
    ping at most this often (faster pings get the connection closed with ENHANCE_YOUR_CALM).
    """

    time_s: float = 30.0
    timeout_s: float = 10.0
    min_client_ping_interval_s: float = 10.0
    permit_without_calls: bool = True

    def server_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", int(self.time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                int(self.min_client_ping_interval_s * 1000),
            ),
            ("grpc.http2.max_pings_without_data", 0),
        ]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server certificate and key; with ``client_ca``, clients must present a certificate
    signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        try:
            key, cert = self.key.read_bytes(), self.cert.read_bytes()
            ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        except OSError as exc:
            raise ConfigError(f"cannot read a TLS file: {exc.filename}: {exc.strerror}") from exc
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


@dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    """Everything the server needs besides its collaborators."""

    grpc_addr: str = DEFAULT_GRPC_ADDR
    # Empty: no metrics endpoint.
    metrics_addr: str = DEFAULT_METRICS_ADDR
    tls: TlsConfig | None = None
    keepalive: Keepalive = Keepalive()
    postgres_dsn: str = ""
    # Events a SubscribeTraces client may fall behind before it is cut off.
    subscriber_queue_size: int = 1024
    max_concurrent_streams: int = 256
    disk_path: Path = Path("/")
    # Where the server writes its local operator token when no tokens are configured; None:
    # a random token nobody is told (reads only, no writes).
    state_dir: Path | None = None


def split_host_port(addr: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts; ConfigError when malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise ConfigError(f"address {addr!r} is not host:port, for example 127.0.0.1:50051")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(addr: str, tokens_enabled: bool) -> None:
    """Refuse a non-loopback address when no tokens are configured."""
    host, _port = split_host_port(addr)
    if not tokens_enabled and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {addr}: it is not a loopback address and no tokens are "
            "configured, so anyone who can reach it could change the policy. Set "
            "QUANTUM_TOKENS (name:role:token,...) or QUANTUM_TOKENS_FILE, or listen on "
            "127.0.0.1"
        )
