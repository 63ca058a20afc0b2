// Package clients tests the clients for other languages (clients/python,
// clients/node, clients/java) against a real keyshift sidecar: the keyshift
// binary built from this repository, serving a file keyset on a real Unix
// socket. Each language's example app runs as a subprocess (python3, node,
// java) and encrypts and decrypts while the test rotates the keyset under
// it; then each shows how the API's errors reach it; then each language's
// own unit tests run against the same kind of sidecar.
//
// It holds no code: everything is in its tests, which plain `go test ./...`
// (and so `make test`) runs. A missing python3, node or javac fails the test
// with how to install it; it never skips.
package clients
