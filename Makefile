# Entry points for a fresh clone: `make demo` and `make test` (what CI's .ci/run calls).
# Only python3, pip and make are needed: each target builds the virtual environments it uses.
#
#   .venv        python3 (or PYTHON=...): the demo, ruff, ruff format --check, mypy (and `make suite`)
#   .venv-3.10   the oldest supported Python, newest dependencies: the test suite
#   .venv-3.13   the newest supported Python, newest dependencies: the test suite
#   .venv-min    the oldest Python again, every dependency at its declared minimum: the test suite
#
# A Python this machine lacks is skipped, with a message (tools/find-python says where it looks: PATH,
# pyenv's versions, /usr). Each environment is brought up to date when pyproject.toml changes; pip's
# output goes to <environment>/pip.log and is shown only when pip fails.

PYTHON       ?= python3
OLDEST       ?= 3.10
NEWEST       ?= 3.13
TEST_PYTHONS ?= $(OLDEST) $(NEWEST)
MIN_PYTHON   ?= $(OLDEST)
PYTEST_ARGS  ?=

VENV := .venv
BIN  := $(VENV)/bin
PY   := $(BIN)/python
MIN_CONSTRAINTS := build/min-constraints.txt

# The interpreter for each Python X.Y asked for, or empty: PYTHON_3.10 = /path/to/python3.10.
$(foreach v,$(sort $(TEST_PYTHONS) $(MIN_PYTHON)),$(eval PYTHON_$(v) := $(shell sh tools/find-python $(v))))

# The suite runs of `make test`, in order; a missing Python becomes a message.
RUNS := $(foreach v,$(TEST_PYTHONS),$(if $(PYTHON_$(v)),suite-$(v),skip-$(v)))
RUNS += $(if $(PYTHON_$(MIN_PYTHON)),suite-min,skip-min)
# With none of those Pythons here, the suite still runs once, in .venv.
ifeq ($(filter suite-%,$(RUNS)),)
RUNS += suite
endif

.PHONY: demo test lint docs suite suite-min skip-min clean
.PHONY: $(addprefix suite-,$(TEST_PYTHONS)) $(addprefix skip-,$(TEST_PYTHONS))

# $(call pip,VENV,ARGUMENTS): pip install into VENV, quietly unless it fails.
pip = $(1)/bin/python -m pip install $(2) >>$(1)/pip.log 2>&1 \
	|| { cat $(1)/pip.log; echo "make: pip install $(2) failed in $(1) (log above, in $(1)/pip.log)"; exit 1; }

# $(call venv,VENV,INTERPRETER): make VENV (again, if its interpreter is gone), hidden from git (as Python
# 3.13's venv does), with a recent pip (>= 25.1 installs dependency groups).
venv = if ! $(1)/bin/python -c '' 2>/dev/null; then rm -rf $(1) && $(2) -m venv $(1); fi; \
	echo '*' >$(1)/.gitignore; : >$(1)/pip.log; $(call pip,$(1),--upgrade 'pip>=25.1')

# $(call suite,VENV,WHAT): run the test suite in VENV, saying first which Python and versions it has.
suite = @echo; echo "=== test suite in $(1), $(2): $$($(1)/bin/python tools/min_constraints.py --installed)"; \
	$(1)/bin/python -m pytest $(PYTEST_ARGS)

# --- the default environment: the package (for the demo), then the suite's and the developers' tools ---

$(VENV)/.base: pyproject.toml
	@echo "=== installing the package in $(VENV) ($(PYTHON))"
	@$(call venv,$(VENV),$(PYTHON)) && $(call pip,$(VENV),-e .)
	@touch $@

$(VENV)/.dev: $(VENV)/.base
	@echo "=== installing the test extra and the dev group (ruff, mypy) in $(VENV)"
	@$(call pip,$(VENV),-e '.[test]' --group dev)
	@touch $@

# Plus Sphinx and numpydoc for the documentation site.
$(VENV)/.docs: $(VENV)/.base
	@echo "=== installing the docs extra (Sphinx, numpydoc, matplotlib) in $(VENV)"
	@$(call pip,$(VENV),-e '.[docs]')
	@touch $@

# --- one environment per Python the suite runs on, and one at the declared minimum versions ---

.venv-%/.test: pyproject.toml
	@echo "=== installing the package and its test extra in .venv-$* ($(PYTHON_$*))"
	@start=$$(date +%s); $(call venv,.venv-$*,$(PYTHON_$*)) && $(call pip,.venv-$*,-e '.[test]') \
		&& echo "    done in $$(( $$(date +%s) - start )) s"
	@touch $@

$(MIN_CONSTRAINTS): pyproject.toml tools/min_constraints.py tools/min-transitive.txt
	@mkdir -p $(@D)
	@$(PYTHON) tools/min_constraints.py pyproject.toml >$@.tmp && cat tools/min-transitive.txt >>$@.tmp
	@mv $@.tmp $@

.venv-min/.test: pyproject.toml $(MIN_CONSTRAINTS)
	@echo "=== installing the package and its test extra at the declared minimums ($(MIN_CONSTRAINTS)) in .venv-min ($(PYTHON_$(MIN_PYTHON)))"
	@start=$$(date +%s); $(call venv,.venv-min,$(PYTHON_$(MIN_PYTHON))) \
		&& $(call pip,.venv-min,--constraint $(MIN_CONSTRAINTS) -e '.[test]') \
		&& echo "    done in $$(( $$(date +%s) - start )) s"
	@touch $@

# --- targets ---

demo: $(VENV)/.base
	$(PY) examples/demo.py

lint: $(VENV)/.dev
	@echo "=== ruff, ruff format --check, mypy in $(VENV): $$($(PY) -c 'import sys; print("Python", sys.version.split()[0])')"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site in docs/_build/html, warnings as errors (-E: every page read again, so no
# warning hides behind an incremental build); then every example on it runs (the doctest builder).
docs: $(VENV)/.docs
	@echo "=== the documentation site (docs/_build/html), then every example on it"
	$(BIN)/sphinx-build -E -W --keep-going -q -b html -d docs/_build/doctrees docs docs/_build/html
	$(BIN)/sphinx-build -W --keep-going -q -b doctest -d docs/_build/doctrees docs docs/_build/doctest

test: lint $(RUNS)
	@$(MAKE) --no-print-directory docs
	@echo
	@echo "=== make test passed: ruff and mypy in $(VENV), the docs site and its examples; the suite in $(foreach r,$(filter suite%,$(RUNS)),$(if $(filter suite,$(r)),$(VENV),.venv-$(r:suite-%=%)))"
	@$(if $(filter skip-%,$(RUNS)),echo "=== NOT run (no such Python here): $(foreach r,$(filter skip-%,$(RUNS)),$(if $(filter skip-min,$(r)),the minimum versions on $(MIN_PYTHON),Python $(r:skip-%=%)))")

suite: $(VENV)/.dev
	$(call suite,$(VENV),the default Python)

$(addprefix suite-,$(TEST_PYTHONS)): suite-%: .venv-%/.test
	$(call suite,.venv-$*,newest dependencies)

suite-min: .venv-min/.test
	$(call suite,.venv-min,every dependency at its declared minimum)

$(addprefix skip-,$(TEST_PYTHONS)) skip-min:
	@echo
	@echo "=== SKIPPED: no Python $(if $(filter skip-min,$@),$(MIN_PYTHON) for the minimum versions,$(@:skip-%=%)) on this machine (looked on PATH, in pyenv's versions, in /usr): the suite does not run on it"

clean:
	rm -rf $(VENV) .venv-* build .pytest_cache .ruff_cache .mypy_cache .hypothesis src/*.egg-info docs/_build docs/_generated
