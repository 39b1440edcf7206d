# fsha: see README.md. Every target installs what it needs (make deps-build,
# make deps).
SHELL := /bin/bash
# Debian's Go lives outside the default PATH on these machines.
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
CLANG ?= clang-19
STRIP ?= llvm-strip-19
CLANG_FORMAT ?= clang-format-19
GO ?= go
BIN := bin/fsha

# Debian packages, in two sets. Building fsha needs only Go (the BPF
# objects bpf2go made are committed); the BPF toolchain regenerates and
# lints them (make generate, lint, vmlinux): make deps-build. The lab's file
# servers and clients and the tools the tests drive come on top: make deps
# (what test, bench, chaos, fuzz and demo install).
BUILD_PACKAGES := clang-19 llvm-19 clang-format-19 libbpf-dev bpftool
LAB_PACKAGES := iproute2 ethtool \
	hping3 samba smbclient smbnetfs ctdb nfs-ganesha nfs-ganesha-vfs libnfs-utils keepalived \
	libnfs-dev dbus-daemon dbus-bin iputils-arping glusterfs-server glusterfs-client \
	util-linux procps nftables curl

.PHONY: all deps deps-build generate check-generate vmlinux build test test-unit lint bench chaos fuzz demo clean

all: build

# apt_install installs the Debian packages of $(1) that are missing.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-build:
	$(call apt_install,$(BUILD_PACKAGES))

deps: deps-build
	$(call apt_install,$(LAB_PACKAGES))

generate: deps-build
	cd dataplane && BPF2GO_CC=$(CLANG) BPF2GO_STRIP=$(STRIP) $(GO) generate ./...

# The committed bpf2go output must be what bpf/ compiles to.
check-generate: generate
	@if [ -n "$$(git status --porcelain -- dataplane/)" ]; then \
		git status --short -- dataplane/; \
		echo "generated files are stale: run 'make generate' and commit them"; exit 1; \
	fi

vmlinux: deps-build
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux.h

# The version fsha --version prints: the checkout's git describe.
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/fsha

lint: deps-build
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags longlab ./tools/lab/...
	$(GO) tool staticcheck ./...
	@$(CLANG_FORMAT) --dry-run --Werror bpf/*.c bpf/*.h

# The whole suite: lint, generated code, unit, BPF_PROG_RUN and netns tests.
# Privileged tests fail instead of skipping when CI=true.
# Unit, BPF_PROG_RUN and fuzz-seed tests in parallel; the netns labs one
# package at a time, so that their timings do not fight over two cores.
# Each lab package counts its false failovers (a VIP lost or given up with
# no fault injected to explain it: tools/lab/failovers.go) into a report
# printed at the end; under CI=true each one fails its test.
# The last lines count the tests passed, failed and skipped and say why
# each skipped (tools/testsummary); as root a missing privilege fails.
test: deps lint check-generate build
	@set -o pipefail; reports=$$(mktemp -d); summary="$(GO) run ./tools/testsummary"; \
	$(GO) build -o /dev/null ./tools/testsummary || exit 1; \
	$(GO) test -json -count=1 -timeout 10m $$($(GO) list ./... | grep -v '/tools/lab') \
		| tee $$reports/unit.json | $$summary -report=false; rc=$$?; \
	FSHA_LAB_REPORT_DIR=$$reports $(GO) test -json -count=1 -p 1 -timeout 20m ./tools/lab/... \
		| tee $$reports/lab.json | $$summary -report=false || rc=1; \
	for f in $$reports/*; do case $$f in *.json) ;; *) cat $$f;; esac; done; \
	cat $$reports/unit.json $$reports/lab.json | $$summary -output=false; \
	rm -rf $$reports; exit $$rc

# Every suite, then the failover suite again with 10,000 client
# connections on the failed node (5 power cuts of fsha's default, under
# a minute): every one must be reset (see BENCHMARKS.md, Failover).
# BENCH_ARGS keeps the whole run near 35 minutes on a 2-vCPU machine: 10
# trials per failover row (13 min here; the suite's default, 20, doubles it)
# and the I/O freeze beside CTDB with its fast tunables only, 3 trials
# (CTDB at its defaults waits ~45 s per power cut: add it with
# BENCH_ARGS= for the suites' own defaults).
BENCH_ARGS ?= -failover-trials 10 -iofreeze-trials 3 -iofreeze-systems fsha,ctdb-fast
bench: deps build
	$(GO) run ./tools/bench $(BENCH_ARGS)
	$(GO) run ./tools/bench -suite failover -failover-systems fsha -failover-failures power \
		-failover-trials 5 -failover-conns 10000

# Bounded fuzzing (FUZZTIME per target, 60s by default): the data plane's
# differential models (one packet from a seeded state, and sequences with
# the flow cache live and a steered peer flow) and every decoder of input
# from outside (peer messages, config files, pins, BTF). A failing input
# is written under the package's testdata/fuzz/ for `go test` to replay.
FUZZTIME ?= 60s
FUZZ_TARGETS := ./dataplane:FuzzXDP ./dataplane:FuzzTCEgress ./dataplane:FuzzSequence \
	./dataplane:FuzzDecodeBTF ./control/ownership:FuzzDecode ./control/remote:FuzzDecode \
	./control/replication:FuzzDecodeMessage ./control/replication:FuzzDecodeHello \
	./control/config:FuzzParsePublicAddresses ./control/config:FuzzParseNodes \
	./control/config:FuzzSplitCommand ./control/membership:FuzzMeta ./control/node:FuzzDecodePins \
	./control/ctdbclient:FuzzDecode
fuzz: deps
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime=200x $$pkg || exit 1; \
	done

# Long runs of the ownership checks: 50,000 simulated schedules, then the
# lab's fault storms (50 faults on 3 and 5 nodes, judged from the wire),
# five minutes of CPU hogs with no false failover, then the lab's long
# runs (build tag longlab): CTDB and GlusterFS left to their own keepalives
# (~30 s, ~40 s) after a power cut, three
# power cuts of CTDB's leader with fsha's election kick and three without
# (the survivors wait CTDB's leader timeout), three power cuts in a
# 16-node cluster with 64 VIPs (TestSixteenNodes, renewals four times
# rarer than the defaults: see the test), ten rolling reloads of the
# nodes file (TestReloadNodes), a restart of a node while it drains
# (TestRestartDuringDrain), a drain on a second
# network whose nodes have addresses there, and the planned-move,
# failback and power-cut tests again on the macvlan and VXLAN topologies and
# on veth's native XDP_TX path (the tuned lab, --steer-mode xdp).
chaos: deps build
	FSHA_SIM_SCHEDULES=50000 $(GO) test -count=1 -timeout 120m -run TestSimRandomSchedules ./control/ownership/sim/
	FSHA_LAB_ITERATIONS=50 $(GO) test -count=1 -p 1 -timeout 120m -run 'TestFaultStormWire|TestIsolatedOwner7|TestNetworkFlap' ./tools/lab/cluster/
	FSHA_LAB_LOAD_FOR=5m $(GO) test -count=1 -p 1 -timeout 30m -run 'TestNoFalseFailoverUnderLoad' ./tools/lab/cluster/
	$(GO) test -count=1 -p 1 -timeout 30m -tags longlab -run 'TestCTDBKeepalivesWithoutKick|TestGlusterDeadNodeLocksWithoutKick' ./tools/lab/cluster/
	FSHA_LAB_ITERATIONS=3 $(GO) test -count=1 -p 1 -timeout 30m -tags longlab -run 'TestCTDBLeaderDeath' ./tools/lab/cluster/
	$(GO) test -count=1 -p 1 -timeout 30m -tags longlab -run 'TestSixteenNodes' ./tools/lab/cluster/
	$(GO) test -count=10 -p 1 -timeout 30m -tags longlab -run 'TestReloadNodes' ./tools/lab/failover/
	$(GO) test -count=3 -p 1 -timeout 30m -tags longlab -run 'TestRestartDuringDrain' ./tools/lab/failover/
	$(GO) test -count=1 -p 1 -timeout 30m -tags longlab -run 'TestDrainOnSecondNetwork$$' ./tools/lab/failover/
	for topo in macvlan vxlan; do \
		FSHA_LAB_TOPOLOGY=$$topo $(GO) test -count=1 -p 1 -timeout 30m -run 'TestPlannedMoves|TestPowerDown|TestFailback$$|TestDrainTimeoutAndKill' ./tools/lab/failover/ || exit 1; \
	done
	FSHA_LAB_TUNED=1 FSHA_LAB_STEER_MODE=xdp $(GO) test -count=1 -p 1 -timeout 30m -run 'TestPlannedMoves|TestPowerDown|TestFailback$$|TestDrainTimeoutAndKill|TestIPv6DualStack' ./tools/lab/failover/

demo: deps build
	$(GO) run ./tools/demo $(DEMO_ARGS)

clean:
	rm -rf bin dist

# The Debian package (packaging/, issue 11): dist/fsha_VERSION_ARCH.deb.
# The binary is built static (CGO_ENABLED=0: fsha uses no C) so that the
# package depends on nothing; its --version is make build's git describe.
# The man page and bash completion are generated from the CLI
# (cmd/fsha/gendocs.go, built only with -tags gendocs). dpkg-deb only.
.PHONY: deb deb-test
DEB_VERSION = $(shell packaging/deb/version.sh $(VERSION))
deb:
	@rm -rf dist/build && mkdir -p dist/build
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o dist/build/fsha ./cmd/fsha
	$(GO) run -tags gendocs ./cmd/fsha gendocs dist/build/docs
	rm -f dist/fsha_*.deb
	packaging/deb/build.sh dist/build/fsha dist/build/docs $(DEB_VERSION) dist

# Builds the package, checks its metadata and files, installs it into a
# scratch root with dpkg --root, runs the installed fsha, verifies the unit
# with systemd-analyze and, as root with BPF, runs the unit's ExecStart with
# exactly its capabilities in a network namespace. Not part of make test.
deb-test: deb
	packaging/deb/test.sh dist/fsha_$(DEB_VERSION)_$$(dpkg --print-architecture).deb
