#!/usr/bin/env bash
# What `make test` and CI run. Everything the tests need is installed by the
# project's own scripts; every process the tests start is stopped by them.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/install-tools.sh # redis-server (governance store tests), prometheus and promtool (observability)
bash scripts/install-chart-tools.sh # helm, kubernetes-validate, checkov for tests/helm (into .cache/tools)
.venv/bin/ruff check service harness tests bench scripts
.venv/bin/ruff format --check --quiet service harness tests bench scripts
.venv/bin/lint-imports --no-cache # the layer contracts in pyproject.toml: nothing imports upward
.venv/bin/mypy # strict for service.protocol and service.governance (pyproject.toml)
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
