package loadtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/keyshift/keyshift/internal/loadtest/daprtest"
)

// Against a real daprd: Encrypt and Decrypt of one and of three items
// round-trip through the Conn (Decrypt says nothing of the plaintext, so
// the ciphertexts are also checked to be Dapr's scheme and to differ), a
// tampered ciphertext fails to decrypt, Rewrap is not offered, and the
// target samples daprd's own process.
func TestDaprConn(t *testing.T) {
	addr := daprtest.Start(t)
	ctx := context.Background()
	tg, err := openPeer(ctx, PeerSpec{Kind: "dapr", Address: addr}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if tg.PID <= 0 || tg.PID == int32(os.Getpid()) {
		t.Errorf("PID %d: want daprd's", tg.PID)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(int(tg.PID))); err != nil {
		t.Errorf("PID %d: %v", tg.PID, err)
	}
	c, err := tg.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	pt := make([]byte, 1024)
	_, _ = rand.Read(pt)
	for _, n := range []int{1, 3} {
		in := make([][]byte, n)
		for i := range in {
			in[i] = pt
		}
		cts, err := c.Encrypt(ctx, in)
		if err != nil {
			t.Fatalf("encrypt %d: %v", n, err)
		}
		if len(cts) != n {
			t.Fatalf("encrypt %d: %d ciphertexts", n, len(cts))
		}
		for i, ct := range cts {
			// Dapr's scheme: its name on a line, a manifest with the
			// wrapped file key, then AEAD segments; more out than in.
			if !bytes.HasPrefix(ct, []byte("dapr.io/enc/v1\n")) || len(ct) <= len(pt) || bytes.Contains(ct, pt[:64]) {
				t.Fatalf("ciphertext %d of %d: %d bytes, starts %q", i, n, len(ct), ct[:min(len(ct), 20)])
			}
			if i > 0 && bytes.Equal(ct, cts[0]) {
				t.Fatalf("ciphertexts 0 and %d of %d are equal", i, n)
			}
		}
		if err := c.Decrypt(ctx, cts); err != nil {
			t.Fatalf("decrypt %d: %v", n, err)
		}
	}

	cts, err := c.Encrypt(ctx, [][]byte{pt})
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(cts[0])
	bad[len(bad)-20] ^= 1 // in the last segment's AEAD output
	if err := c.Decrypt(ctx, [][]byte{bad}); err == nil {
		t.Fatal("a tampered ciphertext decrypted")
	} else {
		t.Logf("tampered: %v", err)
	}
	if err := c.Decrypt(ctx, [][]byte{cts[0], bad}); err == nil {
		t.Fatal("a batch with a tampered ciphertext decrypted")
	}
	if err := c.Rewrap(ctx, cts); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("rewrap: %v, want ErrUnsupported", err)
	}
}

// The --peer dapr= address: its syntax, defaults and mistakes.
func TestDaprAddress(t *testing.T) {
	a, err := parseDaprAddress("unix:///tmp/d/dapr-x-grpc.socket?component=keys&key=k1")
	if err != nil {
		t.Fatal(err)
	}
	if a.target != "unix:///tmp/d/dapr-x-grpc.socket" || a.component != "keys" || a.key != "k1" || a.wrap != "A256KW" || a.cipher != "" {
		t.Fatalf("%+v", a)
	}
	a, err = parseDaprAddress("127.0.0.1:50001?component=c&key=k&wrap=RSA-OAEP-256&cipher=chacha20-poly1305")
	if err != nil {
		t.Fatal(err)
	}
	if a.target != "127.0.0.1:50001" || a.wrap != "RSA-OAEP-256" || a.cipher != "chacha20-poly1305" {
		t.Fatalf("%+v", a)
	}
	for _, s := range []string{
		"",
		"unix:///tmp/s?component=c",           // no key
		"unix:///tmp/s?key=k",                 // no component
		"unix://rel/s?component=c&key=k",      // relative socket path
		"unix:///tmp/s?component=c&key=k&x=1", // unknown parameter
		"?component=c&key=k",                  // no address
	} {
		if _, err := parseDaprAddress(s); err == nil || !strings.Contains(err.Error(), "--peer dapr=") {
			t.Errorf("%q: %v", s, err)
		}
	}
}
