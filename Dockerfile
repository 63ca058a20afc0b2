# keyshift: static binaries, running as a non-root user, no shell.
# /keyshift has every subcommand; /keyshift-sidecar is `keyshift sidecar`
# alone, which the injector runs in pods (smaller RSS, faster start).
#
# The runtime stage is `scratch` plus CA certificates (for the cloud KMS
# APIs) and a passwd entry for UID 65532; set RUNTIME_IMAGE to your mirror
# of a distroless "static:nonroot" image to use that instead.
ARG BUILDER_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=scratch

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/keyshift ./cmd/keyshift \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/keyshift-sidecar ./cmd/keyshift-sidecar \
 && echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' > /out/passwd

FROM ${RUNTIME_IMAGE}
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/keyshift /keyshift
COPY --from=build /out/keyshift-sidecar /keyshift-sidecar
USER 65532:65532
ENTRYPOINT ["/keyshift"]
