# keyshift: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
# Every recipe line stops at its first failing command, unset variable or
# failing stage of a pipe (without pipefail, `go test | tail` is tail's success).
.SHELLFLAGS := -eu -o pipefail -c
GO ?= go
TOOLBIN := $(HOME)/.cache/keyshift/bin
export PATH := $(TOOLBIN):$(PATH)
STATICCHECK_VERSION := 2026.1
FUZZTIME ?= 8s
# Fuzz targets as package:Target; each runs FUZZTIME in `make test`.
FUZZ_TARGETS := internal/envelope:FuzzParse internal/keyset:FuzzParse internal/sidecar:FuzzHTTPAPI internal/injector:FuzzParseAnnotations internal/injector:FuzzHandler internal/injector:FuzzDiff

.PHONY: test-servers all build figures soak e2e kube-binaries cluster cluster-down image demo test fuzz fuzz-save lint generate bench bench-once tools clean

all: build

build:
	$(GO) build -o bin/keyshift ./cmd/keyshift
	$(GO) build -o bin/keyshift-sidecar ./cmd/keyshift-sidecar
	$(GO) build -o bin/kubectl-keyshift ./cmd/kubectl-keyshift

## e2e: the end-to-end tests: the injector and controller against a real API server, and the whole system on a real one-node cluster (root; builds what is missing first).
e2e:
	./scripts/e2e.sh

## kube-binaries: build the Kubernetes components (one multi-call binary), etcd, kustomize and CoreDNS into ~/.cache/keyshift/bin (cached after).
kube-binaries:
	./scripts/kube-build.sh
	./scripts/coredns-build.sh

## cluster: a real one-node cluster on this machine (root); cluster-down removes it and restores the host.
cluster:
	./scripts/cluster.sh up

cluster-down:
	./scripts/cluster.sh down

IMAGE ?= keyshift/keyshift:dev
CONTAINER_TOOL ?= docker
RUNTIME_IMAGE ?= scratch

## image: the keyshift image (static binaries, non-root). Set RUNTIME_IMAGE to your mirror of a distroless static:nonroot image to use it.
image:
	$(CONTAINER_TOOL) build --build-arg RUNTIME_IMAGE=$(RUNTIME_IMAGE) -t $(IMAGE) .

## figures: measure every figure in the README, write its tables from the JSON measured and draw docs/latency-rotations.png (needs gnuplot).
figures:
	scripts/figures.sh

## soak: the real sidecar at 1,000 calls/s with a rotation a minute for 30 minutes, sampling RSS, FDs and goroutines;
## writes bin/soak/soak.json with each one's slope per hour (SOAK_DURATION, SOAK_ROTATE_EVERY, SOAK_SAMPLE, SOAK_OUT).
soak:
	scripts/soak.sh

## demo: sidecar up, encrypt, rotate live, decrypt old and new (local KMS, no cluster).
demo:
	$(GO) run ./cmd/keyshift demo $(DEMO_FLAGS)

## test: everything CI runs: unit, integration over real sockets, vectors, fuzz corpora, a short run of every fuzz target.
test: test-servers
	$(GO) test -count=1 -race ./...
	$(GO) -C examples/app test -count=1 ./...
	$(MAKE) --no-print-directory fuzz

## test-servers: build the real servers the tests start (Vault, local-kms, daprd) from the Go module proxy; skipped when cached.
test-servers:
	@bash scripts/install-vault.sh
	@bash scripts/install-local-kms.sh
	@bash scripts/install-daprd.sh
	@bash scripts/promtool-build.sh

## fuzz: run every fuzz target for FUZZTIME (make fuzz FUZZTIME=5m for a real session). Each target's
## whole output goes to FUZZLOG/<pkg>-<Target>.log; a failure prints that log whole and any new
## failing input under testdata/fuzz, and fails the build.
## A bare "context deadline exceeded" with no failing input is Go's own -fuzztime race
## (go.dev/issue/75804, fixed in Go 1.27, not in 1.26.x): its log is printed and the target run once more.
FUZZLOG ?= bin/fuzz
fuzz:
	@mkdir -p $(FUZZLOG); \
	for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
	  log=$(FUZZLOG)/$${pkg//\//-}-$$name.log; stamp=$(FUZZLOG)/.start; dir=$$pkg/testdata/fuzz/$$name; \
	  for try in 1 2; do \
	    touch $$stamp; \
	    if $(GO) test -count=1 -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) ./$$pkg >$$log 2>&1; then \
	      echo "fuzz $$pkg $$name: ok, $$(grep '^fuzz: elapsed' $$log | tail -1 | sed -E 's/^fuzz: //; s/ \([0-9]+\/sec\)//') ($$log)"; break; \
	    fi; \
	    echo "fuzz $$pkg $$name: FAILED; its whole log, $$log:"; cat $$log; \
	    new=$$(find $$dir -type f -newer $$stamp 2>/dev/null); \
	    if [ -n "$$new" ]; then echo "new failing input: $$new (replay: go test -run '^$$name$$' ./$$pkg)"; \
	    elif [ $$try = 1 ] && grep -qxE '[[:space:]]*context deadline exceeded' $$log; then \
	      echo "fuzz $$pkg $$name: no failing input; this is Go's -fuzztime race (go.dev/issue/75804), running it once more"; continue; \
	    fi; \
	    exit 1; \
	  done; \
	done

## fuzz-save: keep the inputs the fuzzer found interesting (in the Go cache) under each package's testdata/fuzz, so every go test replays them.
fuzz-save:
	@cache=$$($(GO) env GOCACHE)/fuzz/github.com/keyshift/keyshift; \
	for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
	  src=$$cache/$$pkg/$$name; dst=$$pkg/testdata/fuzz/$$name; mkdir -p $$dst; \
	  if [ -n "$$(ls -A $$src 2>/dev/null)" ]; then cp $$src/* $$dst/; else echo "$$src: nothing cached (make fuzz first)"; fi; \
	  echo "$$dst: $$(ls $$dst | wc -l) inputs"; done

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./internal/sidecar/ ./internal/envelope/

## bench-once: every benchmark in the tree once (-benchtime 1x), so none rots between real measurements; some start
## the test servers. Fails when one fails, skips, or never runs (build-tagged or outside ./...); whole log in BENCHLOG.
BENCHLOG ?= bin/bench-once.log
bench-once: test-servers
	@mkdir -p $(dir $(BENCHLOG))
	$(GO) test -count=1 -v -run '^$$' -bench . -benchtime 1x ./... >$(BENCHLOG) 2>&1 || { cat $(BENCHLOG); exit 1; }
	$(GO) -C examples/app test -count=1 -v -run '^$$' -bench . -benchtime 1x ./... >>$(BENCHLOG) 2>&1 || { cat $(BENCHLOG); exit 1; }
	@grep -E '^(Benchmark.* ns/op|--- )' $(BENCHLOG) || [ $$? = 1 ]
	@if grep -q -- '--- SKIP: Benchmark' $(BENCHLOG); then echo "bench-once: a skipped benchmark is not a passing one"; exit 1; fi; \
	declared=$$(grep -rhoE --include='*_test.go' '^func Benchmark[A-Za-z0-9_]*' . | sed 's/^func //' | sort -u); \
	ran=$$(awk '/^Benchmark/ && / ns\/op/ {n = $$1; sub(/\/.*/, "", n); sub(/-[0-9]+$$/, "", n); print n}' $(BENCHLOG) | sort -u); \
	missing=$$(comm -23 <(echo "$$declared") <(echo "$$ran")); \
	if [ -n "$$missing" ]; then echo "bench-once: declared but never run:"; echo "$$missing"; exit 1; fi; \
	echo "bench-once: all $$(echo "$$declared" | wc -l) benchmarks ran once ($(BENCHLOG))"

lint: tools
	@out=$$(gofmt -l $$(find . -name '*.go' -not -name '*.pb.go' -not -path './.git/*')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e/
	$(GO) -C examples/app vet ./...
	$(TOOLBIN)/staticcheck ./...
	@$(GO) mod tidy; \
	if ! git diff --quiet -- go.mod go.sum; then echo "go mod tidy changed go.mod/go.sum"; git diff -- go.mod go.sum; exit 1; fi

tools:
	@test -x $(TOOLBIN)/staticcheck || GOBIN=$(TOOLBIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	@test -x $(TOOLBIN)/protoc-gen-go || GOBIN=$(TOOLBIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	@test -x $(TOOLBIN)/protoc-gen-go-grpc || GOBIN=$(TOOLBIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2

## generate: regenerate the committed protobuf code (needs protoc: apt-get install protobuf-compiler).
generate: tools
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler"; exit 1; }
	protoc -I sidecar/api/v1 -I /usr/include \
		--go_out=sidecar/api/v1 --go_opt=paths=source_relative \
		--go-grpc_out=sidecar/api/v1 --go-grpc_opt=paths=source_relative \
		sidecar/api/v1/keyshift.proto
	protoc -I internal/xds/usagev1 \
		--go_out=internal/xds/usagev1 --go_opt=paths=source_relative \
		--go-grpc_out=internal/xds/usagev1 --go-grpc_opt=paths=source_relative \
		internal/xds/usagev1/usage.proto

clean:
	rm -rf bin
