// Package vaulttest runs a real Vault server process in dev mode for tests
// (in-memory storage, unsealed, transit mounted) on a random loopback port,
// from the binary scripts/install-vault.sh builds.
package vaulttest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keyshift/keyshift/internal/testbin"
)

// RootToken is the dev server's root token; tests hand clients other
// tokens where a token must not be mistaken for ordinary text.
const RootToken = "root"

// Server is a real Vault server process in dev mode (in-memory storage,
// unsealed, root token "root") on a random loopback port.
type Server struct {
	t    testing.TB
	bin  string
	home string
	port int
	// Addr is the server URL, http://127.0.0.1:PORT.
	Addr string

	mu  sync.Mutex
	cmd *exec.Cmd
	out *testbin.SyncBuffer
}

// vaultBinary finds the server binary: KEYSHIFT_VAULT_BIN, else
// $HOME/.cache/keyshift/bin/vault. A missing binary fails the test with the
// command that installs it, unless KEYSHIFT_SKIP_VAULT=1.
func vaultBinary(t testing.TB) string {
	t.Helper()
	return testbin.Binary{Name: "vault", What: "Vault server", BinEnv: "KEYSHIFT_VAULT_BIN",
		SkipEnv: "KEYSHIFT_SKIP_VAULT", Install: "scripts/install-vault.sh"}.Find(t)
}

// Start starts a dev-mode Vault with the transit engine enabled and stops
// it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, bin: vaultBinary(t), home: t.TempDir()}
	var err error
	for range 3 { // a free port found by listening may be taken before Vault binds it
		s.port = freePort(t)
		s.Addr = "http://127.0.0.1:" + strconv.Itoa(s.port)
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs the process and waits until it serves, then mounts transit.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &testbin.SyncBuffer{}
	cmd := exec.Command(s.bin, "server", "-dev",
		"-dev-root-token-id="+RootToken,
		"-dev-listen-address=127.0.0.1:"+strconv.Itoa(s.port),
		"-dev-no-store-token",
		"-log-level=warn")
	// A clean environment: no VAULT_* from the developer's shell, and a
	// private HOME so nothing lands in the real one.
	cmd.Env = []string{"HOME=" + s.home, "PATH=" + os.Getenv("PATH")}
	cmd.Stdout = out
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
			return fmt.Errorf("vault dev server exited at start:\n%s", out.String())
		default:
		}
		resp, err := http.Get(s.Addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return fmt.Errorf("vault dev server not healthy after 30s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.RootClient().Sys().Mount("transit", &vaultapi.MountInput{Type: "transit"}); err != nil {
		return fmt.Errorf("enable transit: %w", err)
	}
	return nil
}

// Kill ends the process at once (SIGKILL): dev mode loses every key.
func (s *Server) Kill() {
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

// Restart starts a fresh dev server on the same port (empty storage).
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// Signal sends sig (SIGSTOP/SIGCONT) to the server process. For SIGSTOP
// it returns only once every thread of the process is stopped: a thread
// running on another core stops at its next kernel entry, and a request
// sent in between would still be answered.
func (s *Server) Signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
	if sig != syscall.SIGSTOP {
		return
	}
	pid := s.cmd.Process.Pid
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if allStopped(pid) {
			return
		}
	}
	s.t.Fatalf("vault pid %d did not stop within 5s", pid)
}

// allStopped reports whether every thread of pid is in state T (stopped).
func allStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// RootClient is an admin client for setting the server up.
func (s *Server) RootClient() *vaultapi.Client {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = s.Addr
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		panic(err)
	}
	c.SetToken(RootToken)
	c.ClearNamespace()
	return c
}

// Write is an admin write that fails the test on error.
func (s *Server) Write(path string, data map[string]any) *vaultapi.Secret {
	s.t.Helper()
	sec, err := s.RootClient().Logical().Write(path, data)
	if err != nil {
		s.t.Fatalf("admin write %s: %v", path, err)
	}
	return sec
}

// CreateKey creates a Transit key; derived selects context binding.
func (s *Server) CreateKey(name string, derived bool) {
	s.t.Helper()
	s.Write("transit/keys/"+name, map[string]any{"type": "aes256-gcm96", "derived": derived})
}

// TokenWithPolicy makes a child token allowed to use every Transit key.
func (s *Server) TokenWithPolicy(ttl string) string {
	s.t.Helper()
	s.WritePolicy()
	sec, err := s.RootClient().Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"keyshift"}, TTL: ttl})
	if err != nil {
		s.t.Fatal(err)
	}
	return sec.Auth.ClientToken
}

// WritePolicy installs the least-privilege policy the backend needs.
func (s *Server) WritePolicy() {
	s.t.Helper()
	const policy = `
path "transit/encrypt/*"          { capabilities = ["update"] }
path "transit/decrypt/*"          { capabilities = ["update"] }
path "transit/datakey/*"          { capabilities = ["update"] }
path "transit/rewrap/*"           { capabilities = ["update"] }
path "transit/keys/*"             { capabilities = ["read"] }
path "transit/keys/+/rotate"      { capabilities = ["update"] }
`
	if err := s.RootClient().Sys().PutPolicy("keyshift", policy); err != nil {
		s.t.Fatal(err)
	}
}
