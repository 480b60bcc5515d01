# The two commands of the README: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test data browser bench bench-compare clean-venv

# Python compiles each module of the venv once, on its first import, instead of pip compiling all of torch's,
# Ray's and MLflow's up front (half the install): so the byte code must be written, whatever the shell says.
unexport PYTHONDONTWRITEBYTECODE

# (Re)build the virtual environment when it is missing or older than pyproject.toml; with the example plug-in
# package (examples/byol-bench-tico), which the tests run as an outside package's method and backbone.
EXAMPLE_PLUGIN := examples/byol-bench-tico
$(STAMP): pyproject.toml $(EXAMPLE_PLUGIN)/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e '.[test]' -e $(EXAMPLE_PLUGIN)
	@touch $@

# A Debian package, installed where this can (as root with apt-get); elsewhere nothing happens.
define apt_install
if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
  echo "installing the Debian package $(1)"; \
  apt-get install -y -q $(1) >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $(1) >/dev/null; }; \
fi
endef

# Fashion-MNIST, the default data set: on disk already, else Debian's package, else torchvision's
# download (users with internet).
data: $(STAMP)
	@$(BIN)/byol-bench data fashion-mnist --offline 2>/dev/null || { $(call apt_install,dataset-fashion-mnist); \
	  $(BIN)/byol-bench data fashion-mnist; }

# Headless Chromium for the report's browser test (it skips without one).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(call apt_install,chromium); }

# A real quick sweep on the CPU. A finished demo is moved aside so that the demo can be run again.
demo: data
	@if [ -f results/quick/manifest.json ] && grep -q '"complete": true' results/quick/manifest.json; then \
	  mv results/quick results/quick-$$(date +%Y%m%d-%H%M%S); fi
	$(BIN)/byol-bench sweep benchmarks/sweeps/quick.yaml $$( [ -d results/quick/tune ] && echo --resume )

# Two test files at a time (most tests train on one thread), the longest first (tests/conftest.py); a file's
# tests share its fixtures.
TEST_WORKERS ?= 2
test: data browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 tests

# Micro-benchmarks of the hot paths. `bench` saves a run; `bench-compare` fails when a median is
# slower than the last saved run by more than BENCH_TOLERANCE.
BENCH_PATHS ?= benchmarks
BENCH_STORAGE ?= results/benchmarks
BENCH_TOLERANCE ?= median:15%
BENCH_HISTORY ?= results/history
BENCH_FLAGS = -q -p no:cacheprovider --benchmark-only --benchmark-storage=$(BENCH_STORAGE) --benchmark-columns=median,iqr,rounds

# `bench` also appends the run it saved to the history (byol-bench history; docs/regression-tracking.md).
bench: $(STAMP)
	$(BIN)/python -m pytest $(BENCH_PATHS) $(BENCH_FLAGS) --benchmark-autosave
	$(BIN)/byol-bench history add "$$(ls -t $(BENCH_STORAGE)/*/*.json | head -1)" --history-dir $(BENCH_HISTORY)

bench-compare: $(STAMP)
	$(BIN)/python -m pytest $(BENCH_PATHS) $(BENCH_FLAGS) --benchmark-compare --benchmark-compare-fail=$(BENCH_TOLERANCE)

clean-venv:
	rm -rf $(VENV)
