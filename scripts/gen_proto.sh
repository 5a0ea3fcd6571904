#!/usr/bin/env bash
# Regenerates every generated file from proto/. Usage: scripts/gen_proto.sh [OUT_ROOT]
# OUT_ROOT defaults to the repository; `make proto-check` passes a temporary folder and
# compares. Python comes from grpc_tools.protoc (+ mypy-protobuf stubs), TypeScript from buf.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT}"
VENV_BIN="$ROOT/.venv/bin"
PY_OUT="$OUT/gen/python"
TS_OUT="$OUT/clients/node/src/gen"

cd "$ROOT"
rm -rf "$PY_OUT"
mkdir -p "$PY_OUT"
WKT="$("$VENV_BIN/python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
mapfile -t PROTOS < <(cd proto && find quantum -name '*.proto' | LC_ALL=C sort)
PATH="$VENV_BIN:$PATH" "$VENV_BIN/python" -m grpc_tools.protoc \
  -I proto -I "$WKT" \
  --python_out="$PY_OUT" --grpc_python_out="$PY_OUT" \
  --mypy_out="$PY_OUT" --mypy_grpc_out="$PY_OUT" \
  "${PROTOS[@]}"
# Packages need __init__.py for mypy and the wheel; py.typed marks the stubs as typed.
find "$PY_OUT/quantum" -type d -exec touch {}/__init__.py \;
touch "$PY_OUT/quantum/py.typed"

rm -rf "$TS_OUT"
"$ROOT/node_modules/.bin/buf" generate --template buf.gen.yaml -o "$OUT"
