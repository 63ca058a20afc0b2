package vault

import (
	"context"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/kms/vault/vaulttest"
)

// rootToken is the dev server's root token.
const rootToken = vaulttest.RootToken

type devServer = vaulttest.Server

func startVault(t *testing.T) *devServer { return vaulttest.Start(t) }

// newTestClient opens a client on the dev server with fast retries.
func newTestClient(t *testing.T, s *devServer, key string, opts ...Option) *Client {
	t.Helper()
	base := []Option{
		WithAddress(s.Addr),
		WithTimeout(5 * time.Second),
		WithRetry(RetryPolicy{MaxAttempts: 3, BaseDelay: 20 * time.Millisecond, MaxDelay: 100 * time.Millisecond}),
	}
	c, err := New(key, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
