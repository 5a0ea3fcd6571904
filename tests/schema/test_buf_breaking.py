"""`buf breaking` (WIRE_JSON, against the release baseline) bites on a breaking change.

`make test` runs `buf breaking --against proto-baseline/release-0.1.0.binpb`; these tests
prove the guard is real: a copy of proto/ with a breaking edit fails it, while the unchanged
copy and a purely additive edit pass.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "proto-baseline" / "release-0.1.0.binpb"
AI_V1 = Path("proto/quantum/events/v1/ai.proto")


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    """proto/ and buf.yaml copied to a temporary module root."""
    assert BUF.exists(), "the buf CLI is missing: run `make setup` (npm install)"
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    return tmp_path


def _buf_breaking(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(BASELINE)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _edit(root: Path, old: str, new: str) -> None:
    path = root / AI_V1
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{AI_V1} no longer contains {old!r}: update this test"
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_unchanged_schema_passes(schema_copy: Path) -> None:
    result = _buf_breaking(schema_copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_additive_change_passes(schema_copy: Path) -> None:
    _edit(
        schema_copy,
        "google.protobuf.Timestamp generated_at = 8;",
        ("google.protobuf.Timestamp generated_at = 8;\n  string regime = 9;"),
    )
    result = _buf_breaking(schema_copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_changing_a_field_type_fails(schema_copy: Path) -> None:
    _edit(schema_copy, "string confidence = 4;", "double confidence = 4;")
    result = _buf_breaking(schema_copy)
    assert result.returncode != 0
    assert "confidence" in result.stdout
    assert 'changed type from "string" to "double"' in result.stdout


def test_renaming_a_field_fails_because_its_json_name_changes(schema_copy: Path) -> None:
    _edit(schema_copy, "string model_id = 5;", "string model_name = 5;")
    result = _buf_breaking(schema_copy)
    assert result.returncode != 0
    # Wire-compatible (same number and type), but JSON readers would lose the field: only the
    # WIRE_JSON rule set catches it.
    assert 'changed option "json_name" from "modelId" to "modelName"' in result.stdout
