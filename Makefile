# keyshift: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
TOOLBIN := $(HOME)/.cache/keyshift/bin
export PATH := $(TOOLBIN):$(PATH)
STATICCHECK_VERSION := 2026.1
FUZZTIME ?= 10s

.PHONY: all build demo test fuzz lint generate bench tools clean

all: build

build:
	$(GO) build -o bin/keyshift ./cmd/keyshift

## demo: sidecar up, encrypt, rotate live, decrypt old and new (local KMS, no cluster).
demo:
	$(GO) run ./cmd/keyshift demo

## test: everything CI runs: unit, integration over real sockets, vectors, fuzz seeds, a short fuzz run.
test:
	$(GO) test -count=1 -race ./...
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./internal/envelope

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./sidecar/ ./internal/envelope/

lint: tools
	@out=$$(gofmt -l $$(find . -name '*.go' -not -name '*.pb.go' -not -path './.git/*')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
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
