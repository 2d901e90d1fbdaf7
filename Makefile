# The two commands of the README: `make dev` (run everything) and `make test` (CI).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PEER_VENV := .venv-celery

.PHONY: install dev test lint typecheck unit bench bench-e2e bench-celery clean tools

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

## The peer baseline of bench/e2e.py (Celery + Redis + the sendgrid client) in a virtualenv
## of its own: none of it is a dependency of mailfleet, and Celery's pins differ from our
## lock. Best effort: without it the benchmark says the peer baseline was skipped.
$(PEER_VENV)/.installed: bench/celery-requirements.lock
	@($(PY) -m venv $(PEER_VENV) && $(PEER_VENV)/bin/pip install -q -r bench/celery-requirements.lock \
	  && touch $@) || echo "Celery peer baseline not installed (bench/e2e.py will skip it)"

bench-celery: $(PEER_VENV)/.installed

## Run the whole system on embedded defaults (broker, PostgreSQL, sink provider).
dev: install
	$(BIN)/mailfleet dev

## Debian tools the deployment tests run (tests/deploy): promtool (package `prometheus`)
## and docker-compose; the console's browser tests (tests/console) run Debian's chromium;
## the bounce mailbox tests (services/bounces) run Debian's dovecot.
## Installed only when missing; needs root or sudo, quiet otherwise.
DEBIAN_TOOLS := promtool:prometheus docker-compose:docker-compose chromium:chromium dovecot:dovecot-imapd
tools:
	@missing=""; for pair in $(DEBIAN_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  echo "installing$$missing (apt-get)"; \
	  $$sudo apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## Lint, type-check and run every test against a real broker and PostgreSQL.
test: install lint typecheck tools
	$(BIN)/pytest -q -m "not bench" --durations=25

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy libs services

## Long benchmarks, outside the default test run.
bench-e2e: install bench-celery
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) $(PEER_VENV) .mailfleet
