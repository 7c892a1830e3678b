# twincast: `make demo` serves the embedded twin on http://127.0.0.1:8080; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
# The pipecat integration lives in its own environment: pipecat-ai needs protobuf >= 5, mediapipe 0.10.14 < 5.
PIPECAT := integrations/pipecat
PIPECAT_VENV := .venv-pipecat
PIPECAT_STAMP := $(PIPECAT_VENV)/.installed-$(shell cat $(PIPECAT)/pyproject.toml $(PIPECAT)/constraints.txt | sha256sum | cut -c1-12)
DEBIAN_PACKAGES := espeak-ng ffmpeg chromium docker-compose fonts-dejavu-core nginx libnginx-mod-rtmp janus coturn
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit system-deps install pipecat-venv pipecat-example demo-model demo-prior bench clean

demo: system-deps install
	$(BIN)/twincast demo

test: system-deps install pipecat-venv lint typecheck
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

# The fast tier: in-process tests with tiny models built in the test and injected clocks (under 2 minutes on two
# cores); `make test` runs it and the integration tier (the CLI chain, servers, Chromium, nginx-rtmp).
unit: install
	$(BIN)/python -m pytest -q -m "not integration" $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The pipecat integration's environment (its tests run in it, from tests/test_pipecat_integration.py).
pipecat-venv: $(PIPECAT_STAMP)

$(PIPECAT_STAMP): $(PIPECAT)/pyproject.toml $(PIPECAT)/constraints.txt
	test -x $(PIPECAT_VENV)/bin/python || $(PYTHON) -m venv $(PIPECAT_VENV)
	$(PIPECAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PIPECAT_VENV)/bin/python -m pip install --quiet -c $(PIPECAT)/constraints.txt -e '$(PIPECAT)[dev]'
	rm -f $(PIPECAT_VENV)/.installed-*
	touch $@

# A pipecat agent (espeak-ng TTS in pipecat) speaking through the demo twin, recorded to pipecat-agent.mp4.
pipecat-example: system-deps install pipecat-venv
	$(PIPECAT_VENV)/bin/python examples/pipecat_agent.py --serve $(BIN)/twincast --record pipecat-agent.mp4

# Debian packages the demo and the tests use; installed only when missing and only when run as root.
system-deps:
	@missing=""; \
	for cmd in espeak-ng ffmpeg chromium docker-compose nginx janus turnserver; do command -v $$cmd >/dev/null || missing="$$missing $$cmd"; done; \
	test -f /usr/lib/nginx/modules/ngx_rtmp_module.so || missing="$$missing libnginx-mod-rtmp"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages for:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES); \
	  else \
	    echo "missing:$$missing — run as root, or: sudo apt-get install $(DEBIAN_PACKAGES)"; exit 1; \
	  fi; \
	fi

lint: install
	$(BIN)/ruff check .

typecheck: install pipecat-venv
	$(BIN)/mypy
	cd $(PIPECAT) && ../../$(PIPECAT_VENV)/bin/mypy

# Rebuild the shipped demo prior (assets/prior/demo/): the demo teacher on the two public-domain portraits'
# synthetic footage, 6000 steps (about 20 minutes on two CPU cores, plus the footage the first time).
demo-prior: system-deps install
	$(BIN)/python -m bench.prior_study prior --steps 6000

# Rebuild the committed demo model from the demo pack: the flow-matching teacher, its consistency student and
# the regression baseline (weights stored as float16), then the eval report. About 2 hours on two CPU cores.
demo-model: system-deps install
	pack="$$($(BIN)/twincast demo --pack-only -q)" && \
	$(BIN)/twincast train "$$pack" --config demo --out runs/demo --half --force --from-scratch && \
	$(BIN)/twincast distill runs/demo --half --force --steps 1200 && \
	$(BIN)/twincast train "$$pack" --config demo --objective regression --out runs/demo --half --force --steps 4000 && \
	$(BIN)/twincast eval runs/demo --json > /dev/null
	mkdir -p assets/demo
	cp runs/demo/checkpoint.pt runs/demo/student.pt runs/demo/baseline.pt assets/demo/
	cp runs/demo/train.json runs/demo/distill.json runs/demo/baseline.json runs/demo/eval.json assets/demo/

bench: install
	$(BIN)/python -m bench.serve_cpu

clean:
	rm -rf $(VENV) $(PIPECAT_VENV) .mypy_cache .ruff_cache .pytest_cache test-output
