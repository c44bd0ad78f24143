# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests run for real (no mocks): Redis for the store contract tests.
# xmlsec1: pysaml2's stock backend, the baseline of bench/saml_verify.py and the interop IdP.
# chromium: the real-browser WebAuthn test (tests/browser, driven by Playwright; never `playwright install`).
TEST_DEBIAN_PACKAGES := redis-server xmlsec1 chromium
# What the demo needs from Debian: xmlsec1, so pysaml2's stock backend works as documented.
DEMO_DEBIAN_PACKAGES := xmlsec1
PACKAGES ?= $(TEST_DEBIAN_PACKAGES)
# The independent peers of tests/interop (oidc-provider, openid-client, samlify) and axe-core for
# tests/browser, pinned by tests/interop/package-lock.json. Node and npm come from Debian only
# when the machine has none (an image may bring its own Node, with npm inside).
INTEROP := tests/interop
NODE_DEBIAN_PACKAGES := nodejs npm

.PHONY: demo test install lint system-packages node-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

demo: $(VENV)/.installed
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(DEMO_DEBIAN_PACKAGES)"
	$(BIN)/idbroker demo

# Installs missing Debian packages (as root, or through sudo when it is there).
system-packages:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

node-packages:
	@command -v node >/dev/null && command -v npm >/dev/null || \
	  $(MAKE) --no-print-directory system-packages PACKAGES="$(NODE_DEBIAN_PACKAGES)"

# `npm ci` again only when node_modules is missing or the lock file is newer than it.
$(INTEROP)/node_modules/.package-lock.json: $(INTEROP)/package-lock.json | node-packages
	npm ci --prefix $(INTEROP) --no-audit --no-fund
	touch $@

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

test: $(VENV)/.installed-test system-packages $(INTEROP)/node_modules/.package-lock.json lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
