# The two commands of the README: `make demo` (the whole job on a simulated fleet) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
HOSTS ?= 2
SIM_DIR ?= .sim/demo
export PATH := $(abspath $(BIN)):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)

.PHONY: venv lock host-tools docker images demo test unit fleet-tests molecule lint sanity bench clean

# What pyproject.toml asks for, at the exact versions of the lock (pip constraints), so that CI installs what
# was tested. `make lock` writes the lock again from this virtualenv after a dependency changed.
LOCK := requirements/ci.lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q -c $(LOCK) -e '.[train,dev]'
	touch $@

venv: $(VENV)/.installed

lock: venv
	{ sed -n '/^#/p' $(LOCK); $(BIN)/pip freeze --all --exclude-editable; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

host-tools:
	scripts/ensure-host-tools.sh

docker:
	scripts/ensure-docker.sh

# Every image the simulated fleets use, built ahead (cached by recipe: a lookup when nothing changed).
images: venv host-tools docker
	$(BIN)/llava-devserver sim images

demo: venv host-tools docker
	$(BIN)/llava-devserver sim up --hosts $(HOSTS) --name demo -o $(SIM_DIR)
	$(BIN)/ansible-playbook site.yml -i $(SIM_DIR)/devserver.ini
	@echo "Report: $$(ls -d runs/*/ | tail -n 1)report.md"

lint: venv
	$(BIN)/ruff check src tests bench roles plugins
	$(BIN)/ruff format --check src tests bench roles plugins
	$(BIN)/mypy
	$(BIN)/mypy --python-version 3.10 src/llava_devserver/payloads/*.py  # the container's Python (3.9; mypy's oldest)
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --offline --profile production

# Ansible's sanity suite (ansible-test sanity: validate-modules, import, pylint, pep8, yamllint, ...) on the
# collection as it ships (scripts/sanity.sh; ignores explained in tests/sanity/ignore-*.txt).
sanity: venv
	BIN=$(BIN) scripts/sanity.sh

# --durations: the slowest tests of every run are printed, so that growth is seen. One worker: in `make test`
# the images build beside this stage, and two workers only slowed them (measured: the stage before the fleet
# tests took 852 s with -n auto against 766 s serial). Alone, `make unit UNIT_ARGS="-n auto --dist loadfile"`
# uses every core (pytest-xdist: a file per worker, so a module's fixtures are made once).
UNIT_ARGS ?=
unit: venv host-tools
	$(BIN)/pytest -m "not fleet" $(UNIT_ARGS) --durations=10 tests/unit tests/fleet

fleet-tests: venv host-tools docker
	$(BIN)/pytest -m fleet --durations=10 tests/unit tests/fleet

molecule: venv host-tools docker
	for s in default faults; do $(BIN)/molecule test -s $$s || exit 1; done

# What CI runs: each stage timed, the times printed at the end (scripts/stages.sh). The images build in the
# background (mostly downloads and disk) while lint and the unit tests use the CPU. (Molecule beside the fleet
# tests was measured no faster: 47.5 min for both together against 36 + 12 one after the other.)
test:
	scripts/stages.sh venv host-tools docker images@ lint sanity unit wait fleet-tests molecule

bench: venv host-tools docker
	$(PY) bench/validate_bench.py
	$(PY) bench/provision_bench.py

clean:
	-$(BIN)/llava-devserver sim down --all
	rm -rf .sim runs .cache
