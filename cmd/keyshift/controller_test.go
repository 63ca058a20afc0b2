package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// The whole loop through the CLI: a keyset with a 1 s rotation policy, the
// controller on a keyset directory serving xDS, a sidecar that gets the
// keyset over xDS only. The controller rotates, waits for the sidecar's
// ACK, promotes; the sidecar encrypts with v2; the audit trail verifies.
func TestControllerRotatesAndPushes(t *testing.T) {
	dir, err := os.MkdirTemp("", "ksctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ksDir := filepath.Join(dir, "keysets")
	os.Mkdir(ksDir, 0o755)
	kek := "local://" + filepath.Join(dir, "kek.json")
	if code, out, errs := keyshift(t, "", "keyset", "create", "--file", filepath.Join(ksDir, "orders.json"), "--name", "orders", "--kms", kek,
		"--rotation-period", "1s", "--retention", "1h"); code != 0 || !strings.Contains(out, "rotate every 1s") {
		t.Fatalf("create: %d %q %q", code, out, errs)
	}
	xdsAddr := freePort(t)
	trail := filepath.Join(dir, "audit.jsonl")
	sock := filepath.Join(dir, "s.sock")
	ctx, cancel := context.WithCancel(context.Background())
	ctlDone, sideDone := make(chan int), make(chan int)
	var ctlLog, sideLog bytes.Buffer
	go func() {
		ctlDone <- run(ctx, []string{"controller", "--keyset-dir", ksDir, "--xds-addr", xdsAddr, "--xds-auth", "none", "--audit-log", trail,
			"--interval", "100ms", "--min-pending-age", "0", "--metrics-addr", "", "--identity", "test"}, nil, &bytes.Buffer{}, &ctlLog)
	}()
	go func() {
		sideDone <- run(ctx, []string{"sidecar", "--socket", sock, "--keyset", "orders", "--xds-addr", xdsAddr, "--xds-insecure", "--node-id", "ns/pod",
			"--metrics-addr", ""}, nil, &bytes.Buffer{}, &sideLog)
	}()
	defer func() {
		cancel()
		if c := <-ctlDone; c != 0 {
			t.Errorf("controller exited %d:\n%s", c, ctlLog.String())
		}
		<-sideDone
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out, _ := keyshift(t, "", "status", "--socket", sock)
		if code == 0 && strings.Contains(out, `"primary": 2`) && strings.Contains(out, `"source": "xds"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar never got v2 as primary over xDS; status %q\ncontroller log:\n%s", out, ctlLog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	code, ct, errs := keyshift(t, "hello", "encrypt", "--socket", sock)
	if code != 0 {
		t.Fatalf("encrypt: %q", errs)
	}
	if code, pt, _ := keyshift(t, ct, "decrypt", "--socket", sock); code != 0 || pt != "hello" {
		t.Fatalf("decrypt: %d %q", code, pt)
	}
	code, out, errs := keyshift(t, "", "audit", "verify", "--file", trail)
	if code != 0 || !strings.Contains(out, "chain intact") {
		t.Fatalf("audit verify: %d %q %q", code, out, errs)
	}
	b, _ := os.ReadFile(trail)
	for _, step := range []string{`"action":"add-pending"`, `"action":"promote"`} {
		if !strings.Contains(string(b), step) {
			t.Fatalf("audit lacks %s:\n%s", step, b)
		}
	}
	// Tampering with one record is found.
	os.WriteFile(trail, bytes.Replace(b, []byte(`"action":"promote"`), []byte(`"action":"retire"`), 1), 0o600)
	if code, _, errs := keyshift(t, "", "audit", "verify", "--file", trail); code != 1 || !strings.Contains(errs, "was altered") {
		t.Fatalf("tampered trail: %d %q", code, errs)
	}
}
