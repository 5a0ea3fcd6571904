"""Finding a Redis: REDIS_URL, else the local default, else a private redis-server."""

from __future__ import annotations

import pytest

from runtime.core.redis_server import (
    RedisServerNotFound,
    free_port,
    ping,
    redis_url,
    start_redis_server,
)


def test_redis_url_from_the_environment_wins() -> None:
    with redis_url({"REDIS_URL": "redis://127.0.0.1:1/3"}) as url:
        assert url == "redis://127.0.0.1:1/3"


def test_the_local_default_is_used_when_it_answers() -> None:
    server = start_redis_server()
    try:
        with redis_url({}, default_port=server.port) as url:
            assert url == f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def test_a_private_server_is_started_and_stopped_when_nothing_answers() -> None:
    silent = free_port()
    with redis_url({}, default_port=silent) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert port != silent
        assert ping("127.0.0.1", port)
    assert not ping("127.0.0.1", port)


def test_no_redis_server_binary_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisServerNotFound, match="apt-get install redis-server"):
        start_redis_server()
