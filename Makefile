# Paddock: `make serve` runs the service on http://127.0.0.1:8000, `make test` tests it.
VENV := .venv
PY := $(VENV)/bin/python
PADDOCK := $(VENV)/bin/paddock

.PHONY: install serve test test-unit test-e2e bench prepare clean image

install: $(VENV)/.paddock-installed

$(VENV)/.paddock-installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh

prepare: install
	$(PADDOCK) prepare

serve: prepare
	$(PADDOCK) serve

test: install
	bash scripts/test.sh

test-unit: install
	$(PY) -m pytest -q -m "not e2e"

test-e2e: install
	$(PY) -m pytest -q -m e2e

bench: prepare
	bash scripts/install-tools.sh
	$(PY) -m bench.governance
	$(PY) -m bench.prefix_routing
	$(PY) -m bench.scale_up
	$(PY) -m bench.run $(BENCH_ARGS)

# The container image, built with buildah (no Docker engine): docs/container-image.md.
image:
	bash scripts/build-image.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache bench-results
