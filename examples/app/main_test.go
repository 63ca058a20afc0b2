package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyshift/keyshift/sidecar/client"
)

// keyshift runs the keyshift command, failing the test on error.
func keyshift(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("keyshift %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// The app against a real sidecar process on a real socket: a note written
// by one tenant reads back for it, is refused to another, and stays
// readable after the key rotates.
func TestNotesThroughTheSidecar(t *testing.T) {
	dir, _ := os.MkdirTemp("", "ksapp")
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The keyshift binary from this repository, as an operator would install it.
	bin := filepath.Join(dir, "keyshift")
	if out, err := exec.Command("go", "-C", "../..", "build", "-o", bin, "./cmd/keyshift").CombinedOutput(); err != nil {
		t.Fatalf("go build keyshift: %v\n%s", err, out)
	}
	os.Mkdir(filepath.Join(dir, "ks"), 0o755)
	ksFile := filepath.Join(dir, "ks", "keyset.json")
	sock := filepath.Join(dir, "s.sock")
	keyshift(t, bin, "keyset", "create", "--file", ksFile, "--name", "notes", "--kms", "local://"+filepath.Join(dir, "kek.json"))
	side := exec.Command(bin, "sidecar", "--socket", sock, "--keyset", "notes="+ksFile, "--metrics-addr", "")
	if err := side.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { side.Process.Kill(); side.Wait() })
	keys, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer keys.Close()
	waitPrimary := func(v uint32) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := keys.Status(context.Background())
			if err == nil && len(st.GetKeysets()) == 1 && st.GetKeysets()[0].GetPrimary() == v {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("sidecar never served v%d: %v %v", v, st, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitPrimary(1)
	h := (&app{keys: keys, store: &store{notes: map[string][]byte{}}, log: slog.New(slog.DiscardHandler)}).routes()

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/notes?tenant=acme", strings.NewReader("ship on friday")))
	var created struct{ ID string }
	if rec.Code != http.StatusCreated || json.NewDecoder(rec.Body).Decode(&created) != nil {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	get := func(tenant string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/notes/"+created.ID+"?tenant="+tenant, nil))
		return rec
	}
	if r := get("acme"); r.Code != 200 || r.Body.String() != "ship on friday" {
		t.Fatalf("own note: %d %q", r.Code, r.Body)
	}
	if r := get("globex"); r.Code != http.StatusForbidden {
		t.Fatalf("another tenant's note: %d", r.Code)
	}
	keyshift(t, bin, "keyset", "rotate", "--file", ksFile)
	keyshift(t, bin, "keyset", "promote", "--file", ksFile)
	waitPrimary(2)
	if r := get("acme"); r.Code != 200 || r.Body.String() != "ship on friday" {
		t.Fatalf("after rotation: %d %q", r.Code, r.Body)
	}
}
