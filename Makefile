# The two README commands. Both install what they need first (setup/install.sh is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install localnet test bench clean

install:
	@bash setup/install.sh

localnet: install
	$(VENV)/bin/bitmind-lite localnet $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) bench/npr_speed.py
	$(PY) bench/miner.py
	$(PY) bench/validator.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
