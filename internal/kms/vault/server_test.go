package vault

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// rootToken is the dev server's root token; tests hand clients other tokens
// where a token must not be mistaken for ordinary text.
const rootToken = "root"

// devServer is a real Vault server process in dev mode (in-memory storage,
// unsealed, root token "root") on a random loopback port.
type devServer struct {
	t    *testing.T
	bin  string
	home string
	port int
	addr string

	mu  sync.Mutex
	cmd *exec.Cmd
	out *bytes.Buffer
}

// vaultBinary finds the server binary: KEYSHIFT_VAULT_BIN, else
// $HOME/.cache/keyshift/bin/vault. A missing binary fails the test with the
// command that installs it, unless KEYSHIFT_SKIP_VAULT=1.
func vaultBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv("KEYSHIFT_SKIP_VAULT") == "1" {
		t.Skip("KEYSHIFT_SKIP_VAULT=1: skipping tests against a real Vault server")
	}
	bin := os.Getenv("KEYSHIFT_VAULT_BIN")
	if bin == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatalf("no home directory to find the Vault binary in: %v", err)
		}
		bin = filepath.Join(home, ".cache", "keyshift", "bin", "vault")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Vault server binary %s not found (%v): run scripts/install-vault.sh from the repository root, "+
			"or set KEYSHIFT_VAULT_BIN, or KEYSHIFT_SKIP_VAULT=1 to skip", bin, err)
	}
	return bin
}

// startVault starts a dev-mode Vault with the transit engine enabled and
// stops it when the test ends.
func startVault(t *testing.T) *devServer {
	t.Helper()
	s := &devServer{t: t, bin: vaultBinary(t), home: t.TempDir()}
	var err error
	for range 3 { // a free port found by listening may be taken before Vault binds it
		s.port = freePort(t)
		s.addr = "http://127.0.0.1:" + strconv.Itoa(s.port)
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.kill)
	return s
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs the process and waits until it serves, then mounts transit.
func (s *devServer) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &bytes.Buffer{}
	cmd := exec.Command(s.bin, "server", "-dev",
		"-dev-root-token-id="+rootToken,
		"-dev-listen-address=127.0.0.1:"+strconv.Itoa(s.port),
		"-dev-no-store-token",
		"-log-level=warn")
	// A clean environment: no VAULT_* from the developer's shell, and a
	// private HOME so nothing lands in the real one.
	cmd.Env = []string{"HOME=" + s.home, "PATH=" + os.Getenv("PATH")}
	cmd.Stdout = &lockedWriter{w: out}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.out = cmd, out

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("vault dev server exited at start:\n%s", cmd.Stdout.(*lockedWriter).String())
		default:
		}
		resp, err := http.Get(s.addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return fmt.Errorf("vault dev server not healthy after 30s:\n%s", cmd.Stdout.(*lockedWriter).String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.rootClient().Sys().Mount("transit", &vaultapi.MountInput{Type: "transit"}); err != nil {
		return fmt.Errorf("enable transit: %w", err)
	}
	return nil
}

// kill ends the process at once (SIGKILL): dev mode loses every key.
func (s *devServer) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	for i := 0; i < 200; i++ { // wait until the port no longer answers
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.port), 50*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd = nil
}

// restart starts a fresh dev server on the same port (empty storage).
func (s *devServer) restart() {
	s.t.Helper()
	s.kill()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// signal sends sig (SIGSTOP/SIGCONT) to the server process.
func (s *devServer) signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// rootClient is an admin client for setting the server up.
func (s *devServer) rootClient() *vaultapi.Client {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = s.addr
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		panic(err)
	}
	c.SetToken(rootToken)
	c.ClearNamespace()
	return c
}

// write is an admin write that fails the test on error.
func (s *devServer) write(path string, data map[string]any) *vaultapi.Secret {
	s.t.Helper()
	sec, err := s.rootClient().Logical().Write(path, data)
	if err != nil {
		s.t.Fatalf("admin write %s: %v", path, err)
	}
	return sec
}

// createKey creates a Transit key; derived selects context binding.
func (s *devServer) createKey(name string, derived bool) {
	s.t.Helper()
	s.write("transit/keys/"+name, map[string]any{"type": "aes256-gcm96", "derived": derived})
}

// tokenWithPolicy makes a child token allowed to use every Transit key.
func (s *devServer) tokenWithPolicy(ttl string) string {
	s.t.Helper()
	s.writePolicy()
	sec, err := s.rootClient().Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"keyshift"}, TTL: ttl})
	if err != nil {
		s.t.Fatal(err)
	}
	return sec.Auth.ClientToken
}

// writePolicy installs the least-privilege policy the backend needs.
func (s *devServer) writePolicy() {
	s.t.Helper()
	const policy = `
path "transit/encrypt/*"          { capabilities = ["update"] }
path "transit/decrypt/*"          { capabilities = ["update"] }
path "transit/datakey/*"          { capabilities = ["update"] }
path "transit/rewrap/*"           { capabilities = ["update"] }
path "transit/keys/*"             { capabilities = ["read"] }
path "transit/keys/+/rotate"      { capabilities = ["update"] }
`
	if err := s.rootClient().Sys().PutPolicy("keyshift", policy); err != nil {
		s.t.Fatal(err)
	}
}

// lockedWriter lets the test read the server's output while it writes.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// newTestClient opens a client on the dev server with fast retries.
func newTestClient(t *testing.T, s *devServer, key string, opts ...Option) *Client {
	t.Helper()
	base := []Option{
		WithAddress(s.addr),
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
