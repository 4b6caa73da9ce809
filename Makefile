# The two set-up commands are `make demo` and `make test`; each builds its own venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint cluster-check install clean fashion-mnist

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raysift compare configs/demo_mnist1d.yaml --strategies m2,full --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest tests

# ruff (pyproject.toml): the linter, and the formatter in check mode.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The README's cluster path for real: a local two-node Ray cluster, a job submitted through
# the job API with this checkout as its working directory (about a minute).
cluster-check: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[cluster]"
	$(BIN)/python .ci/cluster_check.py

# Fashion-MNIST (60,000 train / 10,000 test, MIT) as IDX files, from Debian's package; only
# configs/compare_fashion_mnist.yaml needs it, never `make demo` or `make test`.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
FASHION_FILES := $(foreach f,train-images-idx3 train-labels-idx1 t10k-images-idx3 \
	t10k-labels-idx1,$(FASHION_MNIST)/$(f)-ubyte.gz)

fashion-mnist:
	@if ls $(FASHION_FILES) >/dev/null 2>&1; then \
		echo "Fashion-MNIST is in $(FASHION_MNIST)"; \
	elif ! command -v apt-get >/dev/null; then \
		echo "make fashion-mnist: apt-get is not available here. Install Debian's package" \
			"dataset-fashion-mnist, or put the four *-ubyte.gz files of" \
			"https://github.com/zalandoresearch/fashion-mnist in a folder and point" \
			"source.path of configs/compare_fashion_mnist.yaml at it" >&2; \
		exit 1; \
	else \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get install -y dataset-fashion-mnist \
			|| { $$sudo apt-get update && $$sudo apt-get install -y dataset-fashion-mnist; }; \
	fi

clean:
	rm -rf $(VENV) runs
