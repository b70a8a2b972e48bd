# nacre: build, guest image, tests, benchmarks.
#
#   make demo    fresh Debian 12 machine, as root: packages, build, guest
#                image, install, then run a container in its own VM
#   make test    everything above but install, then all test tiers
#   make guest   the guest image alone (kernel + initrd)
#   make bench   benchmarks (all sections: boot, containers, templates, ctr,
#                pods): writes target/bench/report.md and report.json
#   make fuzz    every fuzz target (fuzz/, nightly cargo-fuzz) for
#                FUZZ_SECONDS each; make fuzz-smoke (part of make test)
#                replays the seed corpus and fuzzes FUZZ_SMOKE_SECONDS each

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CARGO ?= cargo
PREFIX ?= /usr/local
NACRE_CACHE ?= /var/cache/nacre
GUEST_DIR := target/guest
GUEST_TARGET := x86_64-unknown-linux-gnu
GUEST_TARGET_DIR := target/guest-build
AGENT_BIN := $(GUEST_TARGET_DIR)/$(GUEST_TARGET)/guest/nacre-agent
KERNEL := $(GUEST_DIR)/vmlinux
INITRD := $(GUEST_DIR)/initrd.cpio
DEBUG_INITRD := $(GUEST_DIR)/initrd-debug.cpio

# Debian packages every target needs (the Rust toolchain comes with the
# machine). Kernel build, initrd, QEMU comparison, container tools.
APT_PACKAGES := build-essential bc bison flex libelf-dev libssl-dev cpio \
	linux-source-6.1 busybox-static qemu-system-x86 \
	iproute2 procps runc crun podman containerd containernetworking-plugins docker.io \
	protobuf-compiler util-linux

export NACRE_CACHE

.PHONY: all deps build guest kernel agent initrd install demo test lint \
	unit vm-tests bench clean deploy-image-context fuzz fuzz-smoke fuzz-cmin

all: build guest

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo ">> installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	else echo ">> Debian packages present"; fi

build:
	@echo ">> building host binaries (release)"
	$(CARGO) build --release --workspace --bins

kernel:
	@mkdir -p $(GUEST_DIR)
	guest/kernel/build.sh $(KERNEL)

agent:
	@echo ">> building the guest agent (static, size-optimised)"
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build --profile guest \
		-p nacre-agent --bin nacre-agent --target $(GUEST_TARGET) \
		--target-dir $(GUEST_TARGET_DIR)

initrd: agent
	@mkdir -p $(GUEST_DIR)
	guest/initrd/build.sh $(AGENT_BIN) $(INITRD)
	NACRE_INITRD_SHELL=1 guest/initrd/build.sh $(AGENT_BIN) $(DEBUG_INITRD)

guest: deps kernel initrd
	@ls -l $(KERNEL) $(INITRD) $(DEBUG_INITRD)

install: build guest
	install -D -m 0755 target/release/nacre-vmm $(PREFIX)/bin/nacre-vmm
	install -D -m 0755 target/release/nacre $(PREFIX)/bin/nacre
	install -D -m 0755 target/release/containerd-shim-nacre-v2 $(PREFIX)/bin/containerd-shim-nacre-v2
	install -D -m 0755 target/release/nacre-metrics $(PREFIX)/bin/nacre-metrics
	install -D -m 0644 $(KERNEL) $(PREFIX)/share/nacre/vmlinux
	install -D -m 0644 $(INITRD) $(PREFIX)/share/nacre/initrd.cpio
	install -D -m 0644 $(DEBUG_INITRD) $(PREFIX)/share/nacre/initrd-debug.cpio

# What the nacre-deploy installer image (deploy/Containerfile) copies onto
# Kubernetes nodes: target/deploy/{bin,share}.
deploy-image-context: build guest
	install -D -m 0755 -t target/deploy/bin target/release/nacre-vmm target/release/nacre \
		target/release/containerd-shim-nacre-v2 target/release/nacre-metrics
	install -D -m 0644 -t target/deploy/share $(KERNEL) $(INITRD) $(DEBUG_INITRD)
	install -m 0644 deploy/Containerfile target/deploy/Containerfile

demo: deps install
	NACRE=$(PREFIX)/bin/nacre scripts/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# All tiers. VM tests are required here: they fail, never skip, when
# /dev/kvm, root or the guest image is missing.
test: deps guest lint
	NACRE_REQUIRE_VM=1 NACRE_KERNEL=$(abspath $(KERNEL)) NACRE_INITRD=$(abspath $(INITRD)) \
		NACRE_TEST_KERNEL=$(abspath $(KERNEL)) NACRE_REQUIRE_PODMAN=1 \
		$(CARGO) test --workspace --no-fail-fast
	$(MAKE) fuzz-smoke

# Fuzzing (see README "Fuzzing"): FUZZ_TARGETS empty means all of them.
# New corpus entries go to fuzz/target/corpus/, crashes to fuzz/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_TARGETS ?=

fuzz:
	fuzz/run.sh run $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke:
	fuzz/run.sh smoke $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

# Folds the inputs runs found into the committed seeds, minimised.
fuzz-cmin:
	fuzz/cmin.sh $(FUZZ_TARGETS)

bench: deps guest build
	NACRE_KERNEL=$(abspath $(KERNEL)) NACRE_INITRD=$(abspath $(INITRD)) \
		target/release/nacre-bench --out target/bench

clean:
	$(CARGO) clean
