package xds_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/xdsclient"
	"github.com/keyshift/keyshift/internal/xds/xdstest"
)

const serverName = "keyshift-controller.keyshift-system.svc"

// testCA returns a CA's PEM and a server certificate it signed for names.
func testCA(t *testing.T, names ...string) ([]byte, tls.Certificate) {
	t.Helper()
	return xdstest.TLS(t, names...)
}

// The sidecar's client verifies the controller (CA bundle and name) and
// presents its pod token over TLS; the controller refuses it without one.
func TestClientTLSAndToken(t *testing.T) {
	caPEM, cert := testCA(t, serverName)
	var mu sync.Mutex
	var seen []string
	access := &xds.Access{
		Authenticate: func(ctx context.Context) (xds.Identity, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			mu.Lock()
			seen = append(seen, strings.Join(md.Get("authorization"), ","))
			mu.Unlock()
			if strings.Join(md.Get("authorization"), ",") != "Bearer pod-token" {
				return xds.Identity{}, errors.New("token refused")
			}
			return xds.Identity{Namespace: "shop", Pod: "pod-a", PodUID: "u1"}, nil
		},
		Authorize: func(context.Context, xds.Identity, string) error { return nil },
	}
	x, addr := xdstest.ServeWith(t, true, access, []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))})
	v1, _ := keysets(t)
	if err := x.Publish(context.Background(), "shop", v1); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	otherCA, _ := testCA(t, serverName)
	cases := []struct {
		name       string
		ca, server string
		token      string
		applied    bool
	}{
		{"verified both ways", string(caPEM), serverName, "pod-token", true},
		{"controller signed by another CA", string(otherCA), serverName, "pod-token", false},
		{"controller under another name", string(caPEM), "evil.example.svc", "pod-token", false},
		{"wrong token", string(caPEM), serverName, "stolen", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			applied := make(chan struct{}, 1)
			cl := &xdsclient.Client{
				Addr: addr, NodeID: "shop/pod-a", Keysets: []string{"payments"}, Log: slog.New(slog.DiscardHandler),
				CAFile: write("ca.crt", c.ca), ServerName: c.server, TokenFile: write("token", c.token+"\n"),
				MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
				Apply: func(context.Context, string, []byte) error {
					select {
					case applied <- struct{}{}:
					default:
					}
					return nil
				},
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- cl.Run(ctx) }()
			defer func() { cancel(); <-done }()
			select {
			case <-applied:
				if !c.applied {
					t.Fatal("a keyset was applied over a channel that should have failed")
				}
			case <-time.After(700 * time.Millisecond):
				if c.applied {
					t.Fatal("no keyset applied over the verified channel")
				}
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		if s != "Bearer pod-token" && s != "Bearer stolen" {
			t.Fatalf("the controller saw authorization %q; the token must only travel to a verified controller", s)
		}
	}
}

// Keysets never travel in the clear or without a token over a network.
func TestClientRefusesInsecureOffLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:18000": true, "[::1]:18000": true, "localhost:18000": true, "unix:///run/x.sock": true,
		"keyshift-controller.keyshift-system.svc:18000": false, "10.0.0.7:18000": false} {
		err := (&xdsclient.Client{Addr: addr, Insecure: true}).CheckSecurity()
		if (err == nil) != ok {
			t.Errorf("insecure to %s: %v, want allowed=%v", addr, err, ok)
		}
	}
	if err := (&xdsclient.Client{Addr: "x:1"}).CheckSecurity(); err == nil {
		t.Error("a client without CA, server name and token was accepted")
	}
}
