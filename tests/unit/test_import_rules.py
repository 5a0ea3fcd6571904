"""The import rules bite: one domain importing another makes lint-imports fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy_tree(dest: Path) -> None:
    for name in ("runtime", "control_plane", "clients"):
        shutil.copytree(
            ROOT / name, dest / name, ignore=shutil.ignore_patterns("node", "__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT / 'gen' / 'python'}"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_real_tree_keeps_the_rules(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_domain_importing_another_domain_fails(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "runtime/domains/execution/leak.py").write_text(
        "import runtime.domains.risk_safety\n"
    )
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "Domains never import each other" in result.stdout
    assert "BROKEN" in result.stdout


def test_core_importing_the_control_plane_fails(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "runtime/core/leak.py").write_text("import control_plane\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "runtime.core imports no domain" in result.stdout


def test_a_client_importing_the_runtime_or_the_control_plane_fails(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "clients/leak.py").write_text("import runtime.core.tracing\nimport control_plane\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "Clients import neither runtime nor control_plane BROKEN" in result.stdout


def test_the_backtest_importing_the_redis_engine_fails(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "runtime/backtest/leak.py").write_text("import runtime.adapters.redis.bus\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "The backtest is a composition root on the in-memory engine" in result.stdout
    assert "BROKEN" in result.stdout


def test_the_engine_room_importing_a_broker_client_or_an_adapter_fails(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "runtime/core/leak.py").write_text("import redis\n")
    (tmp_path / "runtime/core/leak2.py").write_text("import runtime.adapters.redis.resp\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "The engine room (runtime.core) speaks no broker" in result.stdout
    assert "runtime.core.leak -> redis" in result.stdout
    assert "runtime.core.leak2 -> runtime.adapters.redis.resp" in result.stdout


REDIS_ONLY_IN_ITS_ADAPTER = "Only the Redis adapter speaks Redis"


def test_the_control_plane_or_the_composition_root_importing_redis_fails(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "control_plane/leak.py").write_text("import redis.asyncio\n")
    (tmp_path / "runtime/leak.py").write_text("from redis.exceptions import RedisError\n")
    (tmp_path / "runtime/adapters/memory/leak.py").write_text("import hiredis\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert f"{REDIS_ONLY_IN_ITS_ADAPTER}: nothing else imports redis or hiredis BROKEN" in (
        result.stdout.replace("\n", " ")
    )
    assert "control_plane.leak -> redis" in result.stdout
    assert "runtime.leak -> redis" in result.stdout
    assert "runtime.adapters.memory.leak -> hiredis" in result.stdout


def test_the_redis_adapter_may_import_redis_and_its_callers_reach_it_through_the_adapter(
    tmp_path: Path,
) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "runtime/adapters/redis/extra.py").write_text("import hiredis\nimport redis\n")
    (tmp_path / "control_plane/caller.py").write_text("import runtime.adapters.redis.extra\n")
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{REDIS_ONLY_IN_ITS_ADAPTER}: nothing else imports redis or hiredis KEPT" in (
        result.stdout.replace("\n", " ")
    )


def test_anything_but_the_jetstream_adapter_importing_nats_fails(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "runtime/adapters/redis/leak.py").write_text("import nats\n")
    (tmp_path / "control_plane/leak.py").write_text("from nats.js import JetStreamContext\n")
    (tmp_path / "runtime/adapters/nats/extra.py").write_text("import nats.errors\n")  # its own
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "Only the JetStream adapter speaks NATS: nothing else imports nats BROKEN" in (
        result.stdout.replace("\n", " ")
    )
    assert "runtime.adapters.redis.leak -> nats" in result.stdout
    assert "control_plane.leak -> nats" in result.stdout
    assert "runtime.adapters.nats.extra" not in result.stdout
