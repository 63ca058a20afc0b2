package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// keyshiftBin is the keyshift binary from this repository, as an operator
// would install it; TestMain builds it once.
var keyshiftBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ksapp-bin")
	if err != nil {
		panic(err)
	}
	keyshiftBin = filepath.Join(dir, "keyshift")
	if out, err := exec.Command("go", "-C", "../..", "build", "-o", keyshiftBin, "./cmd/keyshift").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build keyshift: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// keyshift runs the keyshift command, failing the test on error.
func keyshift(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(keyshiftBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("keyshift %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// fixture is a real sidecar process serving keyset "notes" from a file on
// a real socket, and the app's handle on it.
type fixture struct {
	ksFile, sock string
	side         *exec.Cmd
	keys         *sidecar
}

func newFixture(t *testing.T) *fixture {
	// Not t.TempDir: a Unix socket path must stay short.
	dir, _ := os.MkdirTemp("", "ksapp")
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Mkdir(filepath.Join(dir, "ks"), 0o755)
	f := &fixture{ksFile: filepath.Join(dir, "ks", "keyset.json"), sock: filepath.Join(dir, "s.sock")}
	keyshift(t, "keyset", "create", "--file", f.ksFile, "--name", "notes", "--kms", "local://"+filepath.Join(dir, "kek.json"))
	f.start(t)
	t.Cleanup(f.stop)
	keys, err := dialSidecar(f.sock, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keys.Close() })
	f.keys = keys
	f.waitPrimary(t, 1)
	return f
}

func (f *fixture) start(t *testing.T) {
	t.Helper()
	f.side = exec.Command(keyshiftBin, "sidecar", "--socket", f.sock, "--keyset", "notes="+f.ksFile, "--metrics-addr", "")
	if err := f.side.Start(); err != nil {
		t.Fatal(err)
	}
}

// stop kills the sidecar, as a crash or a container restart would.
func (f *fixture) stop() {
	f.side.Process.Kill()
	f.side.Wait()
}

func (f *fixture) waitPrimary(t *testing.T, v uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := f.keys.api().Status(context.Background(), &v1.StatusRequest{})
		if err == nil && len(st.GetKeysets()) == 1 && st.GetKeysets()[0].GetPrimary() == v {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar never served v%d: %v %v", v, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) rotate(t *testing.T, to uint32) {
	t.Helper()
	keyshift(t, "keyset", "rotate", "--file", f.ksFile)
	keyshift(t, "keyset", "promote", "--file", f.ksFile)
	f.waitPrimary(t, to)
}

func getStats(t *testing.T, h http.Handler) stats {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/stats", nil))
	var s stats
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("/stats: %d %q %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatalf("/stats: %v: %s", err, rec.Body)
	}
	return s
}

// The app against a real sidecar process on a real socket: a note written
// by one tenant reads back for it, is refused to another, and stays
// readable after the key rotates.
func TestNotesThroughTheSidecar(t *testing.T) {
	f := newFixture(t)
	h := newApp(f.keys, slog.New(slog.DiscardHandler)).routes()

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
	f.rotate(t, 2)
	if r := get("acme"); r.Code != 200 || r.Body.String() != "ship on friday" {
		t.Fatalf("after rotation: %d %q", r.Code, r.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/healthz: %d", rec.Code)
	}
	// /keyring shows the sidecar's versions after the rotation: v2 primary.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/keyring", nil))
	var kr struct {
		Keysets []struct {
			Primary  uint32 `json:"primary"`
			Versions []struct {
				Version uint32 `json:"version"`
			} `json:"versions"`
		} `json:"keysets"`
	}
	if rec.Code != http.StatusOK || json.NewDecoder(rec.Body).Decode(&kr) != nil || len(kr.Keysets) != 1 ||
		kr.Keysets[0].Primary != 2 || len(kr.Keysets[0].Versions) != 2 {
		t.Fatalf("/keyring after the rotation: %d %+v", rec.Code, kr)
	}
}

// The traffic loop through a rotation: encrypts move from v1 to v2, notes
// sealed under v1 still open, and nothing fails.
func TestTrafficThroughRotation(t *testing.T) {
	f := newFixture(t)
	a := newApp(f.keys, slog.New(slog.DiscardHandler))
	h := a.routes()
	ctx := context.Background()
	for range 2 * oldEvery {
		a.traffic.tick(ctx)
	}
	f.rotate(t, 2)
	for range 2 * oldEvery {
		a.traffic.tick(ctx)
	}
	s := getStats(t, h)
	// 20 ticks: 20 encrypts (10 per version), 20 decrypts, and 4 checks of
	// earlier notes, each opening one per version kept (1, 1, 2, 2).
	want := map[string]opStats{
		opEncrypt:    {OK: 4 * oldEvery},
		opDecrypt:    {OK: 4 * oldEvery},
		opDecryptOld: {OK: 6},
	}
	if fmt.Sprint(s.Ops) != fmt.Sprint(want) {
		t.Errorf("ops %v, want %v", s.Ops, want)
	}
	if s.OK != 8*oldEvery+6 || s.Failed != 0 || len(s.Failures) != 0 || s.LastError != "" || !s.LastErrorAt.IsZero() {
		t.Errorf("ok %d failed %d failures %v last error %q at %v", s.OK, s.Failed, s.Failures, s.LastError, s.LastErrorAt)
	}
	if fmt.Sprint(s.ByVersion) != "map[1:10 2:10]" || fmt.Sprint(s.OldByVersion) != "map[1:4 2:2]" {
		t.Errorf("by_version %v old_by_version %v", s.ByVersion, s.OldByVersion)
	}
	if s.StartedAt.IsZero() || s.FirstOKAt.Before(s.StartedAt) {
		t.Errorf("started_at %v first_ok_at %v", s.StartedAt, s.FirstOKAt)
	}
	// The JSON field names a test in another language reads.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/stats", nil))
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ok", "failed", "by_version", "old_by_version", "ops", "started_at", "first_ok_at", "failures"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("/stats has no %q: %s", k, rec.Body)
		}
	}
	if string(raw["by_version"]) != `{"1":10,"2":10}` {
		t.Errorf("by_version JSON %s", raw["by_version"])
	}
}

// The traffic loop while the sidecar crashes and comes back on a new
// socket: calls fail while it is away, every failure is listed with its
// time inside the outage, and traffic recovers on its own soon after the
// sidecar is back.
func TestTrafficSurvivesSidecarRestart(t *testing.T) {
	f := newFixture(t)
	a := newApp(f.keys, slog.New(slog.DiscardHandler))
	h := a.routes()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.traffic.run(ctx, 20*time.Millisecond); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	waitOK := func(after int64, within time.Duration) stats {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			s := getStats(t, h)
			if s.Ops[opEncrypt].OK > after+5 {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("no traffic within %v: %+v", within, s)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	before := waitOK(0, 10*time.Second)
	if before.Failed != 0 {
		t.Fatalf("failures before the restart: %+v", before.Failures)
	}

	down := time.Now()
	f.stop()
	os.Remove(f.sock) // the restarted container's socket is a new file
	time.Sleep(3 * time.Second)
	up := time.Now()
	f.start(t)
	s := waitOK(getStats(t, h).Ops[opEncrypt].OK, 10*time.Second)
	recovered := time.Since(up)
	t.Logf("sidecar down %v, traffic back %v after it restarted", up.Sub(down).Round(time.Millisecond), recovered.Round(time.Millisecond))
	if recovered > 5*time.Second {
		t.Errorf("traffic took %v to recover after the sidecar came back", recovered)
	}
	if s.Failed == 0 || len(s.Failures) == 0 || s.LastError == "" {
		t.Fatalf("no failures recorded during the outage: %+v", s)
	}
	for _, fl := range s.Failures {
		if fl.At.Before(down) || fl.At.After(up.Add(recovered)) || fl.Op == "" || fl.Error == "" {
			t.Errorf("failure %+v outside the outage %v..%v", fl, down, up.Add(recovered))
		}
	}
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    config
		wantErr bool
	}{
		{name: "defaults", want: config{addr: ":8080"}},
		{
			name: "environment",
			env:  map[string]string{"ADDR": ":9090", "KEYSHIFT_SOCKET": "/run/ks.sock", "KEYSET": "notes", "TRAFFIC_INTERVAL": "250ms"},
			want: config{addr: ":9090", socket: "/run/ks.sock", keyset: "notes", trafficInterval: 250 * time.Millisecond},
		},
		{
			name: "flags over environment",
			args: []string{"--traffic-interval", "1s", "--addr", ":7070"},
			env:  map[string]string{"ADDR": ":9090", "TRAFFIC_INTERVAL": "250ms"},
			want: config{addr: ":7070", trafficInterval: time.Second},
		},
		{name: "bad environment", env: map[string]string{"TRAFFIC_INTERVAL": "often"}, wantErr: true},
		{name: "negative", args: []string{"--traffic-interval=-1s"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseConfig(tc.args, func(k string) string { return tc.env[k] })
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
