#!/usr/bin/env bash
# Generate the Python stubs of the provider contract into OUT_DIR (default: repo root).
# The committed stubs under virtrigaud/provider/v1/ are exactly this script's output;
# tests/test_proto_stubs.py regenerates into a temp dir and fails on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.}
BIN=${VENV:-.venv}/bin
mkdir -p "$OUT"
"$BIN/python" -m grpc_tools.protoc -Iproto \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" --mypy_grpc_out="$OUT" \
  proto/virtrigaud/provider/v1/provider.proto
