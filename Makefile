# The two commands of the README: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test data bench bench-compare clean-venv

# (Re)build the virtual environment when it is missing or older than pyproject.toml.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# Fashion-MNIST, the default data set: on disk already, else Debian's package (as root with apt),
# else torchvision's download (users with internet).
data: $(STAMP)
	@$(BIN)/byol-bench data fashion-mnist --offline >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing the Debian package dataset-fashion-mnist"; \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	  fi; }
	@$(BIN)/byol-bench data fashion-mnist

# A real quick sweep on the CPU. A finished demo is moved aside so that the demo can be run again.
demo: data
	@if [ -f results/quick/manifest.json ] && grep -q '"complete": true' results/quick/manifest.json; then \
	  mv results/quick results/quick-$$(date +%Y%m%d-%H%M%S); fi
	$(BIN)/byol-bench sweep benchmarks/sweeps/quick.yaml $$( [ -d results/quick/tune ] && echo --resume )

test: data
	$(BIN)/python -m pytest -q tests

# Micro-benchmarks of the hot paths. `bench` saves a run; `bench-compare` fails when a median is
# slower than the last saved run by more than BENCH_TOLERANCE.
BENCH_PATHS ?= benchmarks
BENCH_STORAGE ?= results/benchmarks
BENCH_TOLERANCE ?= median:15%
BENCH_FLAGS = -q -p no:cacheprovider --benchmark-only --benchmark-storage=$(BENCH_STORAGE) --benchmark-columns=median,iqr,rounds

bench: $(STAMP)
	$(BIN)/python -m pytest $(BENCH_PATHS) $(BENCH_FLAGS) --benchmark-autosave

bench-compare: $(STAMP)
	$(BIN)/python -m pytest $(BENCH_PATHS) $(BENCH_FLAGS) --benchmark-compare --benchmark-compare-fail=$(BENCH_TOLERANCE)

clean-venv:
	rm -rf $(VENV)
