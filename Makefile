# keyshift: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
TOOLBIN := $(HOME)/.cache/keyshift/bin
export PATH := $(TOOLBIN):$(PATH)
STATICCHECK_VERSION := 2026.1
FUZZTIME ?= 8s
# Fuzz targets as package:Target; each runs FUZZTIME in `make test`.
FUZZ_TARGETS := internal/envelope:FuzzParse internal/keyset:FuzzParse sidecar:FuzzHTTPAPI injector:FuzzParseAnnotations injector:FuzzHandler

.PHONY: test-servers all build figures e2e kube-binaries image demo test fuzz fuzz-save lint generate bench tools clean

all: build

build:
	$(GO) build -o bin/keyshift ./cmd/keyshift
	$(GO) build -o bin/keyshift-sidecar ./cmd/keyshift-sidecar

## e2e: the injector and controller against a real kube-apiserver + etcd (fails, saying how, without the binaries: make kube-binaries).
e2e:
	$(GO) test -tags e2e -count=1 -v ./test/e2e/

## kube-binaries: build kube-apiserver, etcd and kustomize into ~/.cache/keyshift/bin (~25 min cold on 2 cores, cached after).
kube-binaries:
	./scripts/kube-apiserver-build.sh

IMAGE ?= keyshift/keyshift:dev
CONTAINER_TOOL ?= docker
RUNTIME_IMAGE ?= scratch

## image: the keyshift image (static binaries, non-root). Set RUNTIME_IMAGE to your mirror of a distroless static:nonroot image to use it.
image:
	$(CONTAINER_TOOL) build --build-arg RUNTIME_IMAGE=$(RUNTIME_IMAGE) -t $(IMAGE) .

## figures: measure the README's footprint and throughput figures and draw docs/latency-rotations.png.
figures:
	scripts/figures.sh

## demo: sidecar up, encrypt, rotate live, decrypt old and new (local KMS, no cluster).
demo:
	$(GO) run ./cmd/keyshift demo $(DEMO_FLAGS)

## test: everything CI runs: unit, integration over real sockets, vectors, fuzz corpora, a short run of every fuzz target.
test: test-servers
	$(GO) test -count=1 -race ./...
	$(GO) -C examples/app test -count=1 ./...
	$(MAKE) --no-print-directory fuzz

## test-servers: build the real servers the tests start (Vault, local-kms) from the Go module proxy; skipped when cached.
test-servers:
	@bash scripts/install-vault.sh
	@bash scripts/install-local-kms.sh

## fuzz: run every fuzz target for FUZZTIME (make fuzz FUZZTIME=5m for a real session).
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
	  $(GO) test -count=1 -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) ./$$pkg | tail -2; done

## fuzz-save: keep the inputs the fuzzer found interesting (in the Go cache) under each package's testdata/fuzz, so every go test replays them.
fuzz-save:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
	  src=$$($(GO) env GOCACHE)/fuzz/github.com/keyshift/keyshift/$$pkg/$$name; \
	  mkdir -p $$pkg/testdata/fuzz/$$name; cp $$src/* $$pkg/testdata/fuzz/$$name/ 2>/dev/null; \
	  echo "$$pkg/testdata/fuzz/$$name: $$(ls $$pkg/testdata/fuzz/$$name | wc -l) inputs"; done

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./sidecar/ ./internal/envelope/

lint: tools
	@out=$$(gofmt -l $$(find . -name '*.go' -not -name '*.pb.go' -not -path './.git/*')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
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

clean:
	rm -rf bin
