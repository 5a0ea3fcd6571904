"""The cluster form of a Redis URL: ``redis+cluster://[user:password@]host:port[,host:port...]``.

The hosts are seeds: any reachable master or replica of the cluster; the client learns the
rest (and who serves which slot) from the first that answers. ``rediss+cluster://`` is not
supported yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SCHEME = "redis+cluster"


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def is_cluster_url(url: str) -> bool:
    return url.lower().startswith(f"{SCHEME}://")


def parse_cluster_url(url: str) -> ClusterUrl:
    """Seeds and credentials of a cluster URL; ValueError naming what is wrong."""
    if not is_cluster_url(url):
        raise ValueError(
            f"{url!r} is not a Redis Cluster URL: expected {SCHEME}://host:port[,host:port...]"
        )
    rest = url[len(SCHEME) + 3 :]
    rest, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"{url!r}: a Redis Cluster has only database 0; drop /{path}")
    username: str | None = None
    password: str | None = None
    if "@" in rest:
        credentials, _, rest = rest.rpartition("@")
        user, sep, secret = credentials.partition(":")
        if sep:
            username, password = unquote(user) or None, unquote(secret)
        else:
            password = unquote(user)
    seeds: list[tuple[str, int]] = []
    for part in rest.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{url!r}: seed {part!r} must be host:port, as in {SCHEME}://127.0.0.1:7000"
            )
        seeds.append((host.strip("[]"), int(port)))
    return ClusterUrl(tuple(seeds), username, password)
