package sidecar

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// Hostile or broken clients on the socket: random bytes, a garbled HTTP/2
// stream, a truncated preface, silent connections, a flood of
// connect/disconnect, an oversized gRPC message. None may crash the
// sidecar, stall other clients, or touch the keyring.
func TestChaosBadFramesOnSocket(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	before, err := e.client.Encrypt(ctx, []byte("survivor"), nil)
	if err != nil {
		t.Fatal(err)
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("unix", e.cfg.Socket)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	healthy := func(what string) {
		t.Helper()
		pt, err := e.client.Decrypt(ctx, before, nil)
		if err != nil || string(pt) != "survivor" {
			t.Fatalf("after %s: decrypt = %q, %v", what, pt, err)
		}
		if _, err := e.client.Encrypt(ctx, []byte("x"), nil); err != nil {
			t.Fatalf("after %s: encrypt: %v", what, err)
		}
	}

	// Silent connections hold no lock: others are served meanwhile.
	var silent []net.Conn
	for range 20 {
		silent = append(silent, dial())
	}
	healthy("20 silent connections")
	for _, c := range silent {
		c.Close()
	}

	// Random bytes go to the HTTP side, which answers 400 and hangs up.
	for range 20 {
		c := dial()
		junk := make([]byte, 512)
		rand.Read(junk)
		junk[0] = 'X' // not "PRI": the HTTP/1 path
		c.Write(append(junk, "\r\n\r\n"...))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, _ := io.ReadAll(c)
		c.Close()
		if len(resp) > 0 && !bytes.HasPrefix(resp, []byte("HTTP/1.1 400")) {
			t.Fatalf("random bytes answered with %q", resp[:min(len(resp), 40)])
		}
	}
	healthy("random bytes")

	// A valid HTTP/2 preface followed by garbage frames.
	for range 20 {
		c := dial()
		junk := make([]byte, 4096)
		rand.Read(junk)
		c.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), junk...))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c)
		c.Close()
	}
	healthy("garbled HTTP/2")

	// Truncated preface, then hang up.
	for range 20 {
		c := dial()
		c.Write([]byte("PR"))
		c.Close()
	}
	healthy("truncated preface")

	// A flood of connect/disconnect from many goroutines.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if c, err := net.Dial("unix", e.cfg.Socket); err == nil {
					c.Close()
				}
			}
		}()
	}
	wg.Wait()
	healthy("connection flood")

	// Oversized messages: refused with a clear code, not by a crash.
	_, err = e.client.API().Encrypt(ctx, &v1.EncryptRequest{Plaintext: make([]byte, MaxHTTPBody+1)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized gRPC message: %v", err)
	}
	resp, err := e.httpClient().Post("http://keyshift/v1/encrypt", "application/json", strings.NewReader(`{"plaintext":"`+strings.Repeat("A", MaxHTTPBody+8)+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "too large") {
		t.Fatalf("oversized HTTP body: %d %s", resp.StatusCode, b)
	}
	healthy("oversized messages")
}
