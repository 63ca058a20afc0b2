package clients

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
	"github.com/keyshift/keyshift/sidecar/client"
)

var (
	// root is the repository root; clients/ is under it.
	root string
	// keyshiftBin is the keyshift binary built from this repository.
	keyshiftBin string
	// tmp holds the binary and the compiled Java classes.
	tmp string
)

func TestMain(m *testing.M) {
	var err error
	if root, err = filepath.Abs("../.."); err != nil {
		panic(err)
	}
	if tmp, err = os.MkdirTemp("", "ksclients"); err != nil {
		panic(err)
	}
	keyshiftBin = filepath.Join(tmp, "keyshift")
	if out, err := exec.Command("go", "-C", root, "build", "-o", keyshiftBin, "./cmd/keyshift").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build keyshift: %v\n%s", err, out)
		os.RemoveAll(tmp)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// lang is one client: how to run its example app and its own tests.
type lang struct {
	name string
	// example returns the command line that runs the example app.
	example func(t *testing.T) []string
	// unit returns the command line that runs the client's own tests.
	unit func(t *testing.T) []string
	// env is added to the environment of both.
	env func() []string
}

var langs = []lang{
	{
		name: "python",
		example: func(t *testing.T) []string {
			return []string{python(t), filepath.Join(root, "clients/python/example/app.py")}
		},
		unit: func(t *testing.T) []string {
			return []string{python(t), "-m", "unittest", "discover", "-v", "-s", filepath.Join(root, "clients/python/tests")}
		},
		// No __pycache__ left in the source tree.
		env: func() []string {
			return []string{"PYTHONPATH=" + filepath.Join(root, "clients/python"), "PYTHONDONTWRITEBYTECODE=1"}
		},
	},
	{
		name: "node",
		example: func(t *testing.T) []string {
			return []string{node(t), filepath.Join(root, "clients/node/example/app.js")}
		},
		unit: func(t *testing.T) []string {
			return []string{node(t), "--test", filepath.Join(root, "clients/node/test/client.test.js")}
		},
	},
	{
		name: "java",
		example: func(t *testing.T) []string {
			return []string{java(t), "-cp", javaClasses(t), "io.github.keyshift.example.App"}
		},
		unit: func(t *testing.T) []string {
			return []string{java(t), "-cp", javaClasses(t), "io.github.keyshift.client.ClientTest"}
		},
	},
}

// tool finds a command and checks its version, or fails the test saying
// how to install it: a language left untested must not read as a pass.
func tool(t *testing.T, name, install string, versionOK func(path string) (string, bool)) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not on PATH; the clients' tests need it: %s", name, install)
	}
	if v, ok := versionOK(p); !ok {
		t.Fatalf("%s is %s, too old; the clients' tests need a newer one: %s", p, v, install)
	}
	return p
}

func python(t *testing.T) string {
	return tool(t, "python3", "apt-get install -y python3 (3.10 or later)", func(p string) (string, bool) {
		out, err := exec.Command(p, "-c", "import sys; print(sys.version.split()[0]); sys.exit(sys.version_info < (3, 10))").Output()
		return strings.TrimSpace(string(out)), err == nil
	})
}

func node(t *testing.T) string {
	return tool(t, "node", "apt-get install -y nodejs (18 or later)", func(p string) (string, bool) {
		out, err := exec.Command(p, "-e", "console.log(process.version); process.exit(Number(process.versions.node.split('.')[0]) >= 18 ? 0 : 1)").Output()
		return strings.TrimSpace(string(out)), err == nil
	})
}

const jdk = "apt-get install -y openjdk-17-jdk-headless (17 or later)"

func java(t *testing.T) string {
	return tool(t, "java", jdk, func(string) (string, bool) { return "", true })
}

var javaBuild struct {
	sync.Mutex
	classes string
}

// javaClasses compiles the Java client, its example and its tests once,
// with every lint warning an error, into the test's temporary directory.
func javaClasses(t *testing.T) string {
	t.Helper()
	javaBuild.Lock()
	defer javaBuild.Unlock()
	if javaBuild.classes != "" {
		return javaBuild.classes
	}
	javac := tool(t, "javac", jdk, func(p string) (string, bool) {
		out, err := exec.Command(p, "-version").CombinedOutput()
		v := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "javac "))
		major, _ := strconv.Atoi(strings.Split(v, ".")[0])
		return v, err == nil && major >= 17
	})
	var srcs []string
	for _, dir := range []string{"src", "example", "test"} {
		err := filepath.WalkDir(filepath.Join(root, "clients/java", dir), func(p string, d os.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(p, ".java") {
				srcs = append(srcs, p)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	classes := filepath.Join(tmp, "classes")
	if out, err := exec.Command(javac, append([]string{"-Xlint:all", "-Werror", "--release", "17", "-d", classes}, srcs...)...).CombinedOutput(); err != nil {
		t.Fatalf("javac: %v\n%s", err, out)
	}
	javaBuild.classes = classes
	return classes
}

// sidecar is a real keyshift sidecar process serving keyset "notes" from a
// file on a real socket.
type sidecar struct {
	ksFile, sock string
	api          v1.CryptoClient
	log          *syncBuffer
}

// startSidecar starts a sidecar with a new keyset (v1 primary) and the
// extra flags, and stops it when the test ends.
func startSidecar(t *testing.T, flags ...string) *sidecar {
	t.Helper()
	// Not t.TempDir: a Unix socket path must stay short.
	dir, err := os.MkdirTemp("", "kscl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Mkdir(filepath.Join(dir, "ks"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := &sidecar{ksFile: filepath.Join(dir, "ks", "keyset.json"), sock: filepath.Join(dir, "s.sock"), log: &syncBuffer{}}
	keyshift(t, "keyset", "create", "--file", s.ksFile, "--name", "notes", "--kms", "local://"+filepath.Join(dir, "kek.json"))
	cmd := exec.Command(keyshiftBin, append([]string{"sidecar", "--socket", s.sock, "--keyset", "notes=" + s.ksFile, "--metrics-addr", ""}, flags...)...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop(cmd)
		if t.Failed() {
			t.Logf("sidecar log:\n%s", s.log)
		}
	})
	c, err := client.Dial(s.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s.api = c.API()
	return s
}

// stop ends a process: SIGTERM, then SIGKILL after 5 s.
func stop(cmd *exec.Cmd) {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// waitFor polls the sidecar's Status until ok accepts it.
func (s *sidecar) waitFor(t *testing.T, what string, ok func(*v1.StatusResponse, error) bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := s.api.Status(ctx, &v1.StatusRequest{})
		cancel()
		if ok(st, err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar: %s never happened: %v %v", what, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *sidecar) waitPrimary(t *testing.T, v uint32) {
	t.Helper()
	s.waitFor(t, fmt.Sprintf("v%d primary", v), func(st *v1.StatusResponse, err error) bool {
		return err == nil && st.GetReady() && len(st.GetKeysets()) == 1 && st.GetKeysets()[0].GetPrimary() == v
	})
}

// rotate adds a version and promotes it on the file, as an operator
// would, and waits until the sidecar serves it (fsnotify).
func (s *sidecar) rotate(t *testing.T, to uint32) {
	t.Helper()
	keyshift(t, "keyset", "rotate", "--file", s.ksFile)
	keyshift(t, "keyset", "promote", "--file", s.ksFile)
	s.waitPrimary(t, to)
}

func keyshift(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(keyshiftBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("keyshift %v: %v\n%s", args, err, out)
	}
}

// example is a running example app: its stdout lines as they come, and
// its stderr.
type example struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuffer
}

func start(t *testing.T, l lang, sock string, argv []string) *example {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "KEYSHIFT_SOCKET="+sock)
	if l.env != nil {
		cmd.Env = append(cmd.Env, l.env()...)
	}
	e := &example{cmd: cmd, lines: make(chan string, 1024), stderr: &syncBuffer{}}
	cmd.Stderr = e.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			e.lines <- sc.Text()
		}
		close(e.lines)
	}()
	t.Cleanup(func() {
		cancel()
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return e
}

// finish reads the rest of the output and waits for the exit: all stdout
// lines, the exit code.
func (e *example) finish(t *testing.T) ([]string, int) {
	t.Helper()
	var lines []string
	for l := range e.lines {
		lines = append(lines, l)
	}
	err := e.cmd.Wait()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("%v: %v", e.cmd.Args, err)
		}
	}
	return lines, e.cmd.ProcessState.ExitCode()
}

type summary struct {
	Event         string         `json:"event"`
	Language      string         `json:"language"`
	Rounds        int            `json:"rounds"`
	RoundTripsOK  int            `json:"round_trips_ok"`
	Failed        int            `json:"failed"`
	Failures      []string       `json:"failures"`
	ByVersion     map[string]int `json:"by_version"`
	OldDecrypted  int            `json:"old_decrypted"`
	OldByVersion  map[string]int `json:"old_by_version"`
	Rewrapped     int            `json:"rewrapped"`
	BatchOK       int            `json:"batch_ok"`
	PrimaryBefore int            `json:"primary_before"`
	PrimaryAfter  int            `json:"primary_after"`
}

const (
	rounds       = 200
	rotateAfter  = 30 // rounds done under v1 before the test rotates
	early        = 10 // records the examples keep from their first rounds
	oldEvery     = 5  // and re-open every oldEvery rounds
	batchChecked = early + 3
)

// Each example app encrypts and decrypts continuously while the keyset
// rotates under it: no call fails, its ciphertexts move from v1 to v2, the
// records it sealed under v1 keep opening, and at the end it rewraps them
// to v2 and checks the batch calls.
func TestExampleThroughRotation(t *testing.T) {
	for _, l := range langs {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			argv := l.example(t) // a missing tool fails before anything starts
			s := startSidecar(t)
			s.waitPrimary(t, 1)
			began := time.Now()
			e := start(t, l, s.sock, append(argv, "roundtrip", "--rounds", strconv.Itoa(rounds), "--want-versions", "2", "--pause-ms", "5", "--timeout-s", "90"))
			var before []string
			reached := false
			for line := range e.lines {
				before = append(before, line)
				var p struct {
					Event    string `json:"event"`
					Round    int    `json:"round"`
					Versions []int  `json:"versions"`
				}
				if err := json.Unmarshal([]byte(line), &p); err != nil || p.Event != "progress" {
					t.Fatalf("want a progress line, got %q (%v); stderr:\n%s", line, err, e.stderr)
				}
				if fmt.Sprint(p.Versions) != "[1]" {
					t.Fatalf("before the rotation: versions %v", p.Versions)
				}
				if p.Round >= rotateAfter {
					reached = true
					break
				}
			}
			if !reached {
				_, code := e.finish(t)
				t.Fatalf("the example stopped (exit %d) before round %d; output %q; stderr:\n%s", code, rotateAfter, before, e.stderr)
			}
			s.rotate(t, 2)
			lines, code := e.finish(t)
			t.Logf("%s: %d progress lines before the rotation, %d after, %v in all", l.name, len(before), len(lines)-1, time.Since(began).Round(time.Millisecond))
			if len(lines) == 0 {
				t.Fatalf("no output after the rotation (exit %d); stderr:\n%s", code, e.stderr)
			}
			var got summary
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil || got.Event != "summary" {
				t.Fatalf("last line is not the summary: %q: %v; stderr:\n%s", lines[len(lines)-1], err, e.stderr)
			}
			if code != 0 {
				t.Errorf("exit code %d; stderr:\n%s", code, e.stderr)
			}
			n := got.Rounds
			v1, v2 := got.ByVersion["1"], got.ByVersion["2"]
			if n < rounds || v1 < rotateAfter || v2 < 1 || v1+v2 != n {
				t.Errorf("rounds %d, by version %v: want at least %d rounds, at least %d under v1, some under v2, all counted", n, got.ByVersion, rounds, rotateAfter)
			}
			old := (n + oldEvery - 1) / oldEvery
			want := summary{
				Event: "summary", Language: l.name, Rounds: n, RoundTripsOK: n, Failed: 0,
				ByVersion:    map[string]int{"1": v1, "2": v2},
				OldDecrypted: old, OldByVersion: map[string]int{"1": old},
				Rewrapped: early, BatchOK: batchChecked, PrimaryBefore: 1, PrimaryAfter: 2,
			}
			if diff := cmp.Diff(want, got, cmpEmpty); diff != "" {
				t.Errorf("summary (-want +got):\n%s", diff)
			}
		})
	}
}

// cmpEmpty treats a nil and an empty list of failures alike.
var cmpEmpty = cmp.Comparer(func(a, b []string) bool { return len(a) == 0 && len(b) == 0 || cmp.Equal(a, b) })

type errCase struct {
	Code       string `json:"code"`
	Message    string `json:"message"`
	HTTPStatus *int   `json:"http_status"`
}

func runErrors(t *testing.T, l lang, argv []string, sock string, args ...string) map[string]errCase {
	t.Helper()
	e := start(t, l, sock, append(append(argv, "errors"), args...))
	lines, code := e.finish(t)
	if code != 0 || len(lines) != 1 {
		t.Fatalf("errors: exit %d, output %q; stderr:\n%s", code, lines, e.stderr)
	}
	var got struct {
		Event    string             `json:"event"`
		Language string             `json:"language"`
		Cases    map[string]errCase `json:"cases"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil || got.Event != "errors" || got.Language != l.name {
		t.Fatalf("errors output %q: %v", lines[0], err)
	}
	return got.Cases
}

func httpStatus(c int) *int { return &c }

// Each client maps the API's errors the same way: the gRPC code name and
// the sidecar's message, the HTTP status where there was a reply, and a
// clear Unavailable error when there is no socket.
func TestErrorMapping(t *testing.T) {
	for _, l := range langs {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			argv := l.example(t)
			s := startSidecar(t)
			s.waitPrimary(t, 1)
			// A record sealed under v1, which is then rotated out and revoked.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			old, err := s.api.Encrypt(ctx, &v1.EncryptRequest{Plaintext: []byte("card 4111"), Context: map[string]string{"tenant": "acme"}})
			if err != nil || old.GetVersion() != 1 {
				t.Fatalf("encrypt under v1: %v %v", old, err)
			}
			s.rotate(t, 2)
			keyshift(t, "keyset", "revoke", "--file", s.ksFile, "--version", "1")
			s.waitFor(t, "v1 revoked", func(st *v1.StatusResponse, err error) bool {
				if err != nil || len(st.GetKeysets()) != 1 {
					return false
				}
				for _, v := range st.GetKeysets()[0].GetVersions() {
					if v.GetVersion() == 1 {
						return v.GetState() == "revoked"
					}
				}
				return false
			})

			got := runErrors(t, l, argv, s.sock, "--old-ciphertext", base64.StdEncoding.EncodeToString(old.GetCiphertext()))
			missing := s.sock + ".missing"
			ns := got["no_socket"]
			prefix, suffix := "cannot reach the keyshift sidecar at "+missing+": ", " (is the sidecar running? $KEYSHIFT_SOCKET names its socket)"
			if ns.Code != "Unavailable" || ns.HTTPStatus != nil || !strings.HasPrefix(ns.Message, prefix) || !strings.HasSuffix(ns.Message, suffix) ||
				!(strings.Contains(ns.Message, "No such file or directory") || strings.Contains(ns.Message, "ENOENT")) {
				t.Errorf("no_socket: %+v, want Unavailable %q...(no such file)...%q", ns, prefix, suffix)
			}
			nsWant := ns // checked above, by parts: the OS's words vary by language
			want := map[string]errCase{
				"tampered":       {"InvalidArgument", "decryption failed", httpStatus(400)},
				"wrong_context":  {"InvalidArgument", "decryption failed", httpStatus(400)},
				"malformed":      {"InvalidArgument", "envelope: malformed ciphertext: 3 bytes is shorter than the minimum 67", httpStatus(400)},
				"unknown_keyset": {"NotFound", `sidecar: unknown keyset "billing" (this sidecar serves [notes])`, httpStatus(404)},
				"bad_context":    {"InvalidArgument", "envelope: bad encryption context: empty key", httpStatus(400)},
				"oversized":      {"InvalidArgument", "envelope: plaintext too large: 4194305 bytes exceeds 4194304", httpStatus(400)},
				// A batch item's error has no HTTP status of its own: the
				// call succeeded, the item failed.
				"batch_item":  {"InvalidArgument", "decryption failed", nil},
				"no_socket":   nsWant,
				"old_decrypt": {"FailedPrecondition", "sidecar: key version revoked: keyset notes v1 is revoked: rewrap the data with Rewrap, or restore it from a backup", httpStatus(400)},
				"old_rewrap":  {"OK", "", nil},
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

// A sidecar that does not allow the app's UID: every call is
// PermissionDenied with the sidecar's advice, HTTP 403.
func TestPermissionDenied(t *testing.T) {
	other := strconv.Itoa(os.Getuid() + 4242)
	for _, l := range langs {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			argv := l.example(t)
			s := startSidecar(t, "--allowed-uids", other)
			s.waitFor(t, "PermissionDenied for this UID", func(_ *v1.StatusResponse, err error) bool {
				return status.Code(err) == codes.PermissionDenied
			})
			got := runErrors(t, l, argv, s.sock)
			denied := errCase{"PermissionDenied", fmt.Sprintf("sidecar: peer uid %d is not allowed (add it to --allowed-uids or the keyshift.io/allowed-uids annotation)", os.Getuid()), httpStatus(403)}
			for name, c := range got {
				if name == "no_socket" {
					continue
				}
				if diff := cmp.Diff(denied, c); diff != "" {
					t.Errorf("%s (-want +got):\n%s", name, diff)
				}
			}
			if len(got) != 8 {
				t.Errorf("%d cases, want 8: %v", len(got), got)
			}
		})
	}
}

// Each client's own tests (python unittest, node --test, a Java test
// main), against a real sidecar.
func TestClientUnitTests(t *testing.T) {
	for _, l := range langs {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			argv := l.unit(t)
			s := startSidecar(t)
			s.waitPrimary(t, 1)
			e := start(t, l, s.sock, argv)
			lines, code := e.finish(t)
			out := strings.Join(lines, "\n") + "\n" + e.stderr.String()
			if code != 0 {
				t.Fatalf("%s tests failed (exit %d):\n%s", l.name, code, out)
			}
			t.Logf("%s tests:\n%s", l.name, out)
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a process's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

var _ io.Writer = (*syncBuffer)(nil)

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
