# Quick start:  make sample   |   make test [PYTEST_ARGS="-k attention -x"]
# Each target creates .venv (python3 -m venv) when missing and installs the package into it;
# the install is redone only when setup.cfg / pyproject.toml change (stamp files in .venv).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEPS   := setup.cfg pyproject.toml

PYTEST_ARGS ?=
# pytest-xdist workers, one test file per worker at a time (--dist loadfile: a file's module fixtures are built
# once), handed out in collection order (--no-loadscope-reorder; conftest.py puts the longest files first).
# XLA compiles on one thread, so 2 workers overlap one test's compile with another's run on 2 cores.
# Two workers peaked at about 16 GB in use on a 23 GB machine, so a machine under 20 GB runs them in this
# process (PYTEST_WORKERS=0, also for -x, -k and pdb).
PYTEST_WORKERS ?= $(shell awk '/^MemTotal:/ {print ($$2 >= 20000000) ? 2 : 0}' /proc/meminfo 2>/dev/null || echo 0)
SAMPLE_ARGS ?=
# 8 fake CPU devices; no YNNPACK library fusions (XLA:CPU's default turns dots and convolutions into YNN thunks):
# loading a cached executable rebuilds each YNN thunk with a search over the whole module, so the tiny
# networks' cached train step took 113 s to load with them and 58 s without (its compile: ~140 s either way;
# a sample of test files compiled and ran in the same time with and without)
TEST_XLA_FLAGS ?= --xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INVALID

export PYTHONUNBUFFERED := 1

.PHONY: sample test install install-test clean-venv help tiny-world

help:
	@echo "make sample        create .venv, pip install -e ., run sample.py (args: SAMPLE_ARGS=...)"
	@echo "make test          create .venv, pip install -e '.[test,data,eval,beam]', run pytest (2 workers with 20 GB of memory or more; args: PYTEST_ARGS=..., PYTEST_WORKERS=0 for one process)"
	@echo "make install       only the package install;  make install-test: with the test extra"
	@echo "make clean-venv    remove .venv"
	@echo "make tiny-world    train the tiny world from nothing (data, vae, full, tune, export to weights/tiny_world; resumes; args: RECIPE_ARGS=...)"

sample: $(VENV)/.installed-sample
	$(PY) sample.py $(SAMPLE_ARGS)

# pytest's exit code 5 (no tests collected) fails like any other; make itself then exits 2.
test: $(VENV)/.installed-test
	@echo 'XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)'
	@rc=0; XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED: pytest collected no tests (exit code 5)" >&2; fi; \
	exit $$rc

install: $(VENV)/.installed-sample
install-test: $(VENV)/.installed-test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-sample: $(DEPS) | $(PY)
	$(PIP) install -e .
	touch $@

# The test extra is a superset of the plain install, so it satisfies `make sample` too.
$(VENV)/.installed-test: $(DEPS) | $(PY)
	$(PIP) install -e ".[test,data,eval,beam]"
	touch $@ $(VENV)/.installed-sample

# The tiny world's recipe (docs/TINY_WORLD.md): each stage resumes on its own workdir, a finished one is skipped.
# The test install: the world draws with OpenCV (the data extra).
RECIPE_ARGS ?=
tiny-world: $(VENV)/.installed-test
	$(PY) -m xdyna_jax.world.recipe $(RECIPE_ARGS)

clean-venv:
	rm -rf $(VENV)
