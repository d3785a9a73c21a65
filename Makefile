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
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

# The whole audit (cpu-demo preset: 16 BreastMNIST images, one with the fingerprint) into $(DEMO_DIR), about 7.5
# minutes on 2 CPU cores. The data is found locally (--data-root, $DIFFAUDIT_DATA, ../shared/data/medmnist,
# ~/.medmnist) or downloaded once into ~/.medmnist. Rerunning keeps the finished stages; `make clean-demo` starts over.
demo: $(STAMP)
	$(VENV)/bin/diffaudit audit --run-dir $(DEMO_DIR) --preset cpu-demo --download

test: $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR)
