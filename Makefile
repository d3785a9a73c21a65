# Two commands on a fresh machine with Python 3.11 and pip:  make demo  and  make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: install demo test clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Train the cpu preset on 32 BreastMNIST images (one with the fingerprint) and sample a grid.
# Rerunning keeps what is finished; `make clean-demo` starts over.
demo: $(STAMP)
	$(VENV)/bin/diffaudit prepare --dataset breastmnist --n-train 32 --seed 0 --run-dir $(DEMO_DIR)
	$(VENV)/bin/diffaudit train --run-dir $(DEMO_DIR) --preset cpu
	$(VENV)/bin/diffaudit sample --run-dir $(DEMO_DIR) --n 64 --steps 250
	@echo "sample grid: $(DEMO_DIR)/samples/em250-seed0/grid.png"

test: $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR)
