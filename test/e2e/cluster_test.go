//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/keyshift/keyshift/internal/injector/injectortest"
)

// buildHint is what a missing binary's failure says.
const buildHint = "build kube-apiserver, etcd and kustomize with scripts/kube-build.sh " +
	"(about 25 minutes cold on 2 cores; later runs reuse the cached binaries in ~/.cache/keyshift/bin), " +
	"or point KEYSHIFT_BIN at a directory holding them"

// binDir is where the build script puts the binaries.
func binDir() string {
	if d := os.Getenv("KEYSHIFT_BIN"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "keyshift", "bin")
}

// findBinary returns the path of name in binDir() or PATH, or fails the test
// with how to build it.
func findBinary(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(binDir(), name)
	if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("%s not found in %s or PATH: %s", name, binDir(), buildHint)
	return ""
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

// process is a child process the test started and stops.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan error
}

func startProcess(t *testing.T, name, bin string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); f.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// tail is the end of the process's log, for failure messages.
func (p *process) tail() string {
	data, _ := os.ReadFile(p.log)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

func (p *process) exited() error {
	select {
	case err := <-p.done:
		p.done <- err
		if err == nil {
			err = errors.New("exited")
		}
		return err
	default:
		return nil
	}
}

// waitHTTP polls url until it answers 200, the process exits, or timeout.
func waitHTTP(t *testing.T, p *process, client *http.Client, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if err := p.exited(); err != nil {
			t.Fatalf("%s exited (%v) before %s answered; its log:\n%s", p.name, err, url, p.tail())
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: %s not ready after %v (last: %s); its log:\n%s", p.name, url, timeout, last, p.tail())
}

// cluster is a running etcd + kube-apiserver and an admin client config.
type cluster struct {
	rest      *rest.Config
	kube      *kubernetes.Clientset // the admin's clientset
	apiserver *process
	admin     *http.Client
	url       string
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	apiserverBin := findBinary(t, "kube-apiserver")
	etcdBin := findBinary(t, "etcd")
	dir := t.TempDir()

	clientPort, peerPort := freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	etcd := startProcess(t, "etcd", etcdBin,
		"--name=e2e", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=e2e="+peerURL, "--log-level=warn",
		// A throwaway cluster: skip fsync so 400 pod writes do not wait on the disk.
		"--unsafe-no-fsync")
	waitHTTP(t, etcd, http.DefaultClient, etcdURL+"/health", 30*time.Second)

	ca, err := injectortest.NewCA("e2e cluster CA")
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.IssueServer("127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.IssueClient("keyshift-e2e-admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		t.Fatal(err)
	}
	saKeyFile := write("sa.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}))
	port := freePort(t)
	apiserver := startProcess(t, "kube-apiserver", apiserverBin,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--tls-cert-file="+write("apiserver.crt", serving.CertPEM),
		"--tls-private-key-file="+write("apiserver.key", serving.KeyPEM),
		"--client-ca-file="+write("ca.crt", ca.PEM),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+saKeyFile,
		"--service-account-signing-key-file="+saKeyFile,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		"--profiling=false",
		// No kubernetes Service endpoints: the advertise address is loopback.
		"--endpoint-reconciler-type=none",
	)
	cert, err := admin.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}},
	}}
	waitHTTP(t, apiserver, hc, url+"/readyz", 120*time.Second)
	cfg := &rest.Config{
		Host: url,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: ca.PEM, CertData: admin.CertPEM, KeyData: admin.KeyPEM,
		},
		QPS: 1000, Burst: 1000, Timeout: 30 * time.Second,
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{apiserver: apiserver, admin: hc, url: url, rest: cfg, kube: kube}
}

// get fetches a path from the API server as the admin.
func (c *cluster) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.admin.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(buf.String()))
	}
	return buf.Bytes(), nil
}
