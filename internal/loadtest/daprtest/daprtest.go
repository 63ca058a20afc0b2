// Package daprtest runs a real Dapr sidecar (daprd, built by
// scripts/install-daprd.sh) for tests of the load tool's "dapr" peer:
// standalone, with no app, placement, scheduler or sentry, one crypto
// component of type crypto.dapr.localstorage holding one 256-bit AES key,
// and its gRPC API on a Unix socket. scripts/start-daprd.sh starts the same
// setup for scripts.
package daprtest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keyshift/keyshift/internal/loadtest/daprpb"
	"github.com/keyshift/keyshift/internal/testbin"
)

const (
	// AppID names the sidecar; its sockets are dapr-AppID-grpc.socket and
	// dapr-AppID-http.socket.
	AppID = "bench"
	// Component is the crypto component's name.
	Component = "keys"
	// Key is the key's name: its file name in the component's directory.
	Key = "bench-key"
	// Wrap is the key-wrap algorithm the key serves (AES key wrap).
	Wrap = "A256KW"
)

// ComponentYAML is the crypto component, reading keys from keyDir.
func ComponentYAML(keyDir string) string {
	return fmt.Sprintf(`apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: %s
spec:
  type: crypto.dapr.localstorage
  version: v1
  metadata:
    - name: path
      value: %q
`, Component, keyDir)
}

// Args is daprd's command line (without the binary) for resources in
// resDir and sockets in sockDir: standalone, no app, no control plane,
// metrics off, only warnings logged, the internal gRPC API (for other
// sidecars, unused here) on loopback.
func Args(resDir, sockDir string) []string {
	return []string{
		"--mode", "standalone",
		"--app-id", AppID,
		"--resources-path", resDir,
		"--unix-domain-socket", sockDir,
		"--dapr-internal-grpc-listen-address", "127.0.0.1",
		"--enable-metrics=false",
		"--log-level", "warn",
	}
}

// Binary finds daprd: KEYSHIFT_DAPRD_BIN, else
// $HOME/.cache/keyshift/bin/daprd. A missing binary fails the test.
func Binary(t testing.TB) string {
	t.Helper()
	return testbin.Binary{Name: "daprd", What: "daprd (Dapr sidecar)", BinEnv: "KEYSHIFT_DAPRD_BIN",
		Install: "scripts/install-daprd.sh"}.Find(t)
}

// Start runs daprd until the test ends and returns the load tool's peer
// address for it (unix:///.../dapr-bench-grpc.socket?component=keys&key=bench-key&wrap=A256KW),
// once an encryption through it succeeds.
func Start(t testing.TB) string {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	keyDir, resDir := filepath.Join(dir, "keys"), filepath.Join(dir, "resources")
	for _, d := range []string{keyDir, resDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A random 256-bit key, base64 (Dapr reads a file that is neither JSON
	// nor PEM as a symmetric key, raw or base64).
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if err := os.WriteFile(filepath.Join(keyDir, Key), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(resDir, "crypto.yaml"), []byte(ComponentYAML(keyDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	// A short directory for the sockets: t.TempDir paths can pass the
	// 108-byte limit of a socket path.
	sockDir, err := os.MkdirTemp("", "ksdapr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "dapr-"+AppID+"-grpc.socket")

	out := &testbin.SyncBuffer{}
	cmd := exec.Command(bin, Args(resDir, sockDir)...)
	// A clean environment: no DAPR_* from the developer's shell, and a
	// private HOME.
	cmd.Env = []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH")}
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start daprd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("daprd output:\n%s", out.String())
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	var last error
	for {
		select {
		case <-exited:
			t.Fatalf("daprd exited at start (%v):\n%s", cmd.ProcessState, out.String())
		default:
		}
		if _, err := os.Stat(sock); err == nil {
			if last = probe(sock); last == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("daprd did not encrypt through %s within 60s (last error: %v):\n%s", sock, last, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "unix://" + sock + "?component=" + Component + "&key=" + Key + "&wrap=" + Wrap
}

// probe encrypts one byte through the socket: daprd is up and has loaded
// the component.
func probe(sock string) error {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := daprpb.NewDaprClient(cc).EncryptAlpha1(ctx)
	if err != nil {
		return err
	}
	err = s.Send(&daprpb.EncryptRequest{
		Options: &daprpb.EncryptRequestOptions{ComponentName: Component, KeyName: Key, KeyWrapAlgorithm: Wrap},
		Payload: &daprpb.StreamPayload{Data: []byte{0}},
	})
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	var n int
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		n += len(r.GetPayload().GetData())
	}
	if n == 0 {
		return errors.New("empty ciphertext")
	}
	return nil
}
