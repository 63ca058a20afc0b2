package loadtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Conn is one client's connection to a system under load: the sidecar,
// its floor, or a peer (Vault Transit, Dapr, an in-process envelope). One
// call with n items is one request on the wire: n == 1 uses the system's
// single-item API, n > 1 its batch API (or fails if it has none).
type Conn interface {
	// Encrypt seals each plaintext and returns the ciphertexts in order.
	Encrypt(ctx context.Context, plaintexts [][]byte) ([][]byte, error)
	// Decrypt opens each ciphertext (made by Encrypt on any Conn of the
	// same target).
	Decrypt(ctx context.Context, ciphertexts [][]byte) error
	// Rewrap re-seals each ciphertext under the current key without
	// returning plaintext; ErrUnsupported when the system has no such call.
	Rewrap(ctx context.Context, ciphertexts [][]byte) error
	Close() error
}

// ErrUnsupported is returned by a Conn for an operation its system does
// not offer (Dapr has no rewrap); the run fails before it starts.
var ErrUnsupported = fmt.Errorf("loadtest: operation not offered by this system")

// Target is one system under load.
type Target struct {
	// Name labels the target in reports ("keyshift", "floor", "vault", ...).
	Name string
	// Describe says what exactly was measured, for the report.
	Describe string
	// Dial opens one client's connection; Run calls it once per client.
	Dial func(ctx context.Context) (Conn, error)
	// PID is the serving process to sample from /proc (0: none, e.g. in
	// process or over TCP to a process we did not start).
	PID int32
	// Close releases what the target started (processes, sockets).
	Close func()
}

// PeerSpec is one --peer NAME=ADDRESS.
type PeerSpec struct {
	Kind, Address string
}

// ParsePeer reads NAME=ADDRESS (or a bare NAME for kinds without one).
func ParsePeer(s string) (PeerSpec, error) {
	k, a, _ := strings.Cut(s, "=")
	k = strings.TrimSpace(k)
	if !slices.Contains(peerKinds, k) {
		return PeerSpec{}, fmt.Errorf("--peer %q: unknown peer %q (one of %s)", s, k, strings.Join(PeerKinds(), ", "))
	}
	return PeerSpec{Kind: k, Address: a}, nil
}

// peerKinds are the --peer names; openPeer opens each.
var peerKinds = []string{"vault", "dapr", "in-process", "cached-dek"}

// PeerKinds lists the --peer names.
func PeerKinds() []string { return slices.Clone(peerKinds) }

// openPeer starts or connects to one peer for a run of o.
func openPeer(ctx context.Context, p PeerSpec, o Options) (*Target, error) {
	switch p.Kind {
	case "vault":
		return openVault(ctx, p, o)
	case "in-process":
		return openInProcess(ctx, p, o)
	case "cached-dek":
		return openCachedDEK(ctx, p, o)
	case "dapr":
		return openDapr(ctx, p, o)
	default:
		return nil, fmt.Errorf("loadtest: unknown peer %q", p.Kind)
	}
}
