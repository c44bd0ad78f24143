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

.PHONY: demo test install lint system-packages clean

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

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

test: $(VENV)/.installed-test system-packages lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
