# spritedisk — see README.md.
CARGO ?= cargo
DEMO_DIR ?= /tmp/spritedisk-demo

.PHONY: all build test test-s3 build-deps demo-deps test-deps vm-test vm-boot-check lint demo bench clean crash-test fuzz-smoke vm-crash-test vm-workloads bench-smoke vm-pool-s3

all: build

# Every target that compiles first installs what compiling needs
# (tools/install-deps.sh says what each level installs; only what is missing).
build-deps:
	tools/install-deps.sh build
demo-deps:
	tools/install-deps.sh demo
test-deps:
	tools/install-deps.sh test

build: build-deps
	$(CARGO) build --release --bins

# Everything (tools/test.sh): the binaries, `cargo test --workspace` (unit,
# property, e2e, the VM rig's tests), the engine's suite and the e2e tests
# again on s3:// (moto on 127.0.0.1, started by the tests themselves), the
# fuzz smoke; each step announced with its time, failures listed at the end.
test:
	CARGO=$(CARGO) tools/test.sh

# Every cargo-fuzz target for FUZZ_SECONDS (20) from its corpus (nightly).
fuzz-smoke:
	tools/fuzz-smoke.sh

# Named test targets over the whole workspace: the same build as `make test`
# (selecting packages would rebuild dependencies with other features).
# tools/test.sh runs the same list in `make test`.
S3_TESTS = engine cache lease model checkpoint fork gc nbd_clients replica single_writer s3 crash_loop replay remove gc_races durability group_commit
test-s3: test-deps
	$(CARGO) build --bins
	SPRITEDISK_TEST_STORE=s3 $(CARGO) test --workspace --no-fail-fast $(addprefix --test ,$(S3_TESTS))

# The crash loop's long mode (CI runs 6 iterations as part of make test):
# SIGKILL at random moments, re-attach with and without local state.
CRASH_ITERATIONS ?= 1000
crash-test: test-deps
	$(CARGO) build --bins
	CRASH_ITERATIONS=$(CRASH_ITERATIONS) $(CARGO) test -p spritedisk-e2e --test crash_loop -- --nocapture

# The ext4 guest-kill cycle's long mode (CI runs 2 kills in make test).
VM_CRASH_CYCLES ?= 20
vm-crash-test: test-deps
	$(CARGO) build --bins
	VM_CRASH_CYCLES=$(VM_CRASH_CYCLES) $(CARGO) test -p spritedisk-e2e --test ublk ext4_survives -- --nocapture

# The workload test's long form: longer pgbench runs (CI: 10 s each).
PGBENCH_SECS ?= 120
vm-workloads: test-deps
	$(CARGO) build --bins
	SPRITEDISK_PGBENCH_SECS=$(PGBENCH_SECS) $(CARGO) test -p spritedisk-e2e --test ublk workloads -- --nocapture

# The warm pool's s3:// step in the VM (s3s-fs inside the guest; not in CI yet).
vm-pool-s3: test-deps
	$(CARGO) build --bins
	SPRITEDISK_POOL_S3=1 $(CARGO) test -p spritedisk-e2e --test ublk warm_pool -- --nocapture

# Only the ublk tests in the VM rig (make test runs them too).
vm-test: test-deps
	$(CARGO) build --bins
	$(CARGO) test -p spritedisk-e2e --test ublk -- --nocapture

# How reliably the VM rig boots: N boots in a row, no retries.
BOOTS ?= 20
vm-boot-check: test-deps
	tests/vm/rig/boot-check.sh $(BOOTS)

lint: build-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Create a volume on file://, attach it over NBD, write and read it with
# qemu-io, detach, print its stats and verify it.
demo: demo-deps build
	DEMO_DIR=$(DEMO_DIR) tools/demo.sh

bench: test-deps build
	bench/run.sh

# CI's smoke run of the suite: quick mode on the debug build (the numbers
# mean nothing; the scripts, servers, s3backer and the VM all ran), into a
# scratch directory instead of bench/results.
bench-smoke: test-deps
	$(CARGO) build --bins
	BENCH_QUICK=1 BIN=target/debug/spritedisk BENCH_OUT=$$(mktemp -d /var/tmp/spritedisk-bench-smoke.XXXXXX) bench/run.sh

clean:
	$(CARGO) clean
