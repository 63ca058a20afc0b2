package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func keyshift(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// The hand tools end to end: keyset lifecycle on a file, a real sidecar
// started through the CLI, and encrypt/decrypt/rewrap/status against it.
func TestCLI(t *testing.T) {
	dir, err := os.MkdirTemp("", "kscli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file := filepath.Join(dir, "ks.json")
	kek := "local://" + filepath.Join(dir, "kek.json")
	sock := filepath.Join(dir, "s.sock")

	if code, out, errs := keyshift(t, "", "keyset", "create", "--file", file, "--name", "orders", "--kms", kek); code != 0 || !strings.Contains(out, "v1    primary") {
		t.Fatalf("create: %d %q %q", code, out, errs)
	}
	if code, _, errs := keyshift(t, "", "keyset", "create", "--file", file, "--name", "orders", "--kms", kek); code != 1 || !strings.Contains(errs, "already exists") {
		t.Fatalf("create over existing: %d %q", code, errs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		var errb bytes.Buffer
		done <- run(ctx, []string{"sidecar", "--socket", sock, "--keyset", "orders=" + file, "--metrics-addr", "", "--log-level", "debug"}, nil, &bytes.Buffer{}, &errb)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("sidecar exited %d", code)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, out, _ := keyshift(t, "", "status", "--socket", sock, "--ready")
		if code == 0 && strings.Contains(out, `"ready": true`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not ready: %q", out)
		}
		time.Sleep(20 * time.Millisecond)
	}

	code, ct, errs := keyshift(t, "secret data", "encrypt", "--socket", sock, "--context", "user=1")
	if code != 0 || strings.Contains(ct, "secret") {
		t.Fatalf("encrypt: %d %q %q", code, ct, errs)
	}
	if code, pt, errs := keyshift(t, ct, "decrypt", "--socket", sock, "--context", "user=1"); code != 0 || pt != "secret data" {
		t.Fatalf("decrypt: %d %q %q", code, pt, errs)
	}
	if code, _, errs := keyshift(t, ct, "decrypt", "--socket", sock, "--context", "user=2"); code != 1 || !strings.Contains(errs, "decryption failed") {
		t.Fatalf("decrypt with wrong context: %d %q", code, errs)
	}
	if code, _, errs := keyshift(t, "!!", "decrypt", "--socket", sock); code != 1 || !strings.Contains(errs, "not base64") {
		t.Fatalf("decrypt garbage: %d %q", code, errs)
	}

	if code, out, errs := keyshift(t, "", "keyset", "rotate", "--file", file); code != 0 || !strings.Contains(out, "added v2 as pending") {
		t.Fatalf("rotate: %d %q %q", code, out, errs)
	}
	if code, out, errs := keyshift(t, "", "keyset", "promote", "--file", file); code != 0 || !strings.Contains(out, "v2    primary") {
		t.Fatalf("promote: %d %q %q", code, out, errs)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		code, out, _ := keyshift(t, "", "status", "--socket", sock)
		if code == 0 && strings.Contains(out, `"primary": 2`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation not picked up: %q", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, re, errs := keyshift(t, ct, "rewrap", "--socket", sock, "--context", "user=1")
	if code != 0 || re == ct {
		t.Fatalf("rewrap: %d %q", code, errs)
	}
	for _, c := range []string{ct, re} {
		if code, pt, errs := keyshift(t, c, "decrypt", "--socket", sock, "--context", "user=1"); code != 0 || pt != "secret data" {
			t.Fatalf("decrypt after rotation: %d %q %q", code, pt, errs)
		}
	}
	if code, _, errs := keyshift(t, "", "keyset", "retire", "--file", file, "--version", "2"); code != 1 || !strings.Contains(errs, "promote another version") {
		t.Fatalf("retire primary: %d %q", code, errs)
	}
	if code, out, _ := keyshift(t, "", "keyset", "retire", "--file", file, "--version", "1"); code != 0 || !strings.Contains(out, "v1    disabled") {
		t.Fatalf("retire v1: %d %q", code, out)
	}
	if code, out, _ := keyshift(t, "", "keyset", "show", "--file", file); code != 0 || strings.Contains(out, "wrappedKey") {
		t.Fatalf("show: %d %q", code, out)
	}
	// The emergency path on a file: a new primary and the old one
	// revoked in one write; the sidecar then refuses data under v2 but
	// still rewraps it.
	if code, out, errs := keyshift(t, "", "keyset", "revoke", "--file", file, "--version", "2"); code != 0 || !strings.Contains(out, "v3 is the new primary, v2 is revoked") || !strings.Contains(out, "v2    revoked") {
		t.Fatalf("revoke: %d %q %q", code, out, errs)
	}
	if code, _, errs := keyshift(t, "", "keyset", "revoke", "--file", file, "--version", "2"); code != 1 || !strings.Contains(errs, "only a pending, primary or decrypt-only version can be revoked") {
		t.Fatalf("revoke twice: %d %q", code, errs)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		code, _, errs := keyshift(t, re, "decrypt", "--socket", sock, "--context", "user=1")
		if code == 1 && strings.Contains(errs, "revoked") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("decrypt under the revoked v2: %d %q", code, errs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, out, errs := keyshift(t, re, "rewrap", "--socket", sock, "--context", "user=1"); code != 0 || out == re {
		t.Fatalf("rewrap off the revoked v2: %d %q", code, errs)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "usage: keyshift"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"sidecar", "--keyset", "=x"}, 2, "want NAME=PATH"},
		{[]string{"sidecar", "--keyset", "nopath"}, 1, "keyset nopath has no file and no xDS address"},
		{[]string{"sidecar", "--keyset", "a=/x", "--allowed-uids", "root"}, 1, "write self, any, or comma-separated"},
		{[]string{"sidecar", "--keyset", "a=/x", "--socket-mode", "999"}, 1, "octal mode"},
		{[]string{"sidecar", "--keyset", "a=/x", "--log-level", "loud"}, 1, "write debug, info, warn or error"},
		{[]string{"keyset", "explode", "--file", "x"}, 2, "unknown subcommand"},
		{[]string{"sidecar", "--keyset", "a=/x", "--ext-authz-addr", "127.0.0.1:9191"}, 1, "need --ext-authz-policy FILE"},
		{[]string{"sidecar", "--keyset", "a=/x", "--ext-authz-addr", "127.0.0.1:9191", "--ext-authz-policy", "/nonexistent.yaml"}, 1, "nonexistent.yaml"},
		{[]string{"keyset", "create", "--file", "/tmp/x.json"}, 2, "--name and --kms are required"},
		{[]string{"keyset", "create", "--file", filepath.Join(os.TempDir(), "ks-cli-x.json"), "--name", "a", "--kms", "vault://x"}, 1, `unknown URI scheme "vault"`},
		{[]string{"keyset", "show"}, 2, "exactly one of --file or --secret"},
		{[]string{"keyset", "show", "--secret", "noslash"}, 2, "NAMESPACE/NAME"},
		{[]string{"audit", "verify", "--file", "/nonexistent/audit"}, 1, "no such file"},
		{[]string{"encrypt", "--context", "novalue"}, 2, "want KEY=VALUE"},
	}
	for _, c := range cases {
		code, _, errs := keyshift(t, "", c.args...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("keyshift %v = %d %q, want %d containing %q", c.args, code, errs, c.code, c.msg)
		}
	}
}
