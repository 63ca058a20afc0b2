// Package client is the small Go client applications use to talk to their
// pod's keyshift sidecar over its Unix socket:
//
//	c, err := client.Dial("")          // $KEYSHIFT_SOCKET
//	ct, err := c.Encrypt(ctx, plaintext, map[string]string{"tenant": "a"})
//	pt, err := c.Decrypt(ctx, ct, map[string]string{"tenant": "a"})
//
// Errors are gRPC statuses (status.Code(err) is InvalidArgument, NotFound,
// Unavailable or PermissionDenied; see the API's proto).
package client

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keyshift/keyshift/internal/podspec"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// EnvSocket names the environment variable the injector sets in every app
// container: the sidecar's socket path.
const EnvSocket = podspec.SocketEnv

// DefaultSocket is where the injector mounts the sidecar's socket: Dial
// uses it when neither a path nor $KEYSHIFT_SOCKET names one, as the
// Python, Node.js and Java clients and the keyshift CLI do.
const DefaultSocket = podspec.Socket

// Client calls one sidecar. It is safe for concurrent use.
type Client struct {
	conn   *grpc.ClientConn
	api    v1.CryptoClient
	keyset string
}

// Option configures Dial.
type Option func(*Client)

// WithKeyset makes Encrypt use the named keyset (needed when the sidecar
// serves more than one).
func WithKeyset(name string) Option { return func(c *Client) { c.keyset = name } }

// Dial connects to the sidecar socket at path, or at $KEYSHIFT_SOCKET when
// path is empty, or at DefaultSocket when that is unset too. It does not
// block: the first call connects.
func Dial(path string, opts ...Option) (*Client, error) {
	if path == "" {
		path = os.Getenv(EnvSocket)
	}
	if path == "" {
		path = DefaultSocket
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("keyshift client: %w", err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("keyshift client: %w", err)
	}
	c := &Client{conn: conn, api: v1.NewCryptoClient(conn)}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// API is the generated client, for batch calls and Status.
func (c *Client) API() v1.CryptoClient { return c.api }

// Encrypt seals plaintext under the primary version, binding context.
func (c *Client) Encrypt(ctx context.Context, plaintext []byte, context map[string]string) ([]byte, error) {
	r, err := c.api.Encrypt(ctx, &v1.EncryptRequest{Keyset: c.keyset, Plaintext: plaintext, Context: context})
	if err != nil {
		return nil, err
	}
	return r.GetCiphertext(), nil
}

// Decrypt opens a ciphertext; context must equal the one given to Encrypt.
func (c *Client) Decrypt(ctx context.Context, ciphertext []byte, context map[string]string) ([]byte, error) {
	r, err := c.api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: ciphertext, Context: context})
	if err != nil {
		return nil, err
	}
	return r.GetPlaintext(), nil
}

// Rewrap re-seals a ciphertext under the primary version without exposing
// the plaintext; rewrapped is false when it already was.
func (c *Client) Rewrap(ctx context.Context, ciphertext []byte, context map[string]string) (out []byte, rewrapped bool, err error) {
	r, err := c.api.Rewrap(ctx, &v1.RewrapRequest{Ciphertext: ciphertext, Context: context})
	if err != nil {
		return nil, false, err
	}
	return r.GetCiphertext(), r.GetRewrapped(), nil
}

// Status reports the sidecar's keysets and versions.
func (c *Client) Status(ctx context.Context) (*v1.StatusResponse, error) {
	return c.api.Status(ctx, &v1.StatusRequest{})
}
