# spritedisk — see README.md.
CARGO ?= cargo
DEMO_DIR ?= /tmp/spritedisk-demo

.PHONY: all build test lint demo bench clean

all: build

build:
	$(CARGO) build --release --bins

# The binary must exist before the end-to-end tests run it.
test:
	$(CARGO) build --bins
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Create a volume on file://, attach it over NBD, write and read it with
# qemu-io, detach, print its stats and verify it.
demo: build
	DEMO_DIR=$(DEMO_DIR) tools/demo.sh

bench: build
	bench/run.sh

clean:
	$(CARGO) clean
