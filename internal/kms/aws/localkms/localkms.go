// Package localkms runs a real local-kms server process
// (github.com/nsmithuk/local-kms, an implementation of the AWS KMS JSON API
// with real AES-GCM) for tests, from the binary scripts/install-local-kms.sh
// builds, and a fault-injecting proxy to put in front of it.
//
// The server keeps its keys in a LevelDB directory under t.TempDir(), so a
// killed and restarted server still has them. It is seeded with AES keys
// and aliases at start. local-kms listens on all interfaces (it has no
// listen-address setting); tests reach it on 127.0.0.1 only.
package localkms

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/keyshift/keyshift/internal/testbin"
)

// The account and region the server puts in every ARN.
const (
	Account = "111122223333"
	Region  = "eu-west-2"
)

// InstallCommand is how to build the server binary, from the repository root.
const InstallCommand = "scripts/install-local-kms.sh"

// Key is a symmetric (AES-256) key to seed the server with.
type Key struct {
	// ID is the key ID, a UUID; see NewKeyID.
	ID string
	// Aliases are alias names ("alias/app") that point at the key.
	Aliases []string
	// BackingKeys are the key's 32-byte key materials, oldest first; more
	// than one simulates past rotations. Default: one random material.
	BackingKeys [][]byte
	// NextRotation, if set, turns on automatic rotation: the key rotates at
	// the first use after this time (local-kms checks when it loads the key).
	NextRotation time.Time
}

// NewKeyID returns a random key ID (a version 4 UUID).
func NewKeyID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// KeyARN is the ARN the server gives the key with this ID.
func KeyARN(id string) string { return "arn:aws:kms:" + Region + ":" + Account + ":key/" + id }

// AliasARN is the ARN the server gives an alias ("alias/app").
func AliasARN(alias string) string { return "arn:aws:kms:" + Region + ":" + Account + ":" + alias }

// Binary finds the server binary: KEYSHIFT_LOCAL_KMS_BIN, else
// $HOME/.cache/keyshift/bin/local-kms. A missing binary fails the test with
// the command that installs it; KEYSHIFT_SKIP_AWS=1 skips the test instead.
func Binary(t testing.TB) string {
	t.Helper()
	return testbin.Binary{Name: "local-kms", What: "local-kms server", BinEnv: "KEYSHIFT_LOCAL_KMS_BIN",
		SkipEnv: "KEYSHIFT_SKIP_AWS", Install: InstallCommand + " (about 25 s)"}.Find(t)
}

// SetEnv points the AWS SDK's default configuration at test credentials
// and away from the developer's own: static keys in the environment (the
// first link of the default chain, so no instance-metadata call is made),
// no shared config files, no region, no endpoint override, no IMDS. It uses
// t.Setenv, so the test must not be parallel.
func SetEnv(t testing.TB) {
	t.Helper()
	none := filepath.Join(t.TempDir(), "no-aws-config")
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":                      "AKIDKEYSHIFTTEST",
		"AWS_SECRET_ACCESS_KEY":                  "keyshift-test-secret",
		"AWS_SESSION_TOKEN":                      "",
		"AWS_PROFILE":                            "",
		"AWS_DEFAULT_PROFILE":                    "",
		"AWS_CONFIG_FILE":                        none,
		"AWS_SHARED_CREDENTIALS_FILE":            none,
		"AWS_REGION":                             "",
		"AWS_DEFAULT_REGION":                     "",
		"AWS_ENDPOINT_URL":                       "",
		"AWS_ENDPOINT_URL_KMS":                   "",
		"AWS_EC2_METADATA_DISABLED":              "true",
		"AWS_ROLE_ARN":                           "",
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_MAX_ATTEMPTS":                       "",
		"AWS_RETRY_MODE":                         "",
	} {
		t.Setenv(k, v)
	}
}

// Server is a real local-kms process on a loopback port.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	// Endpoint is the server URL, http://127.0.0.1:PORT. It stays the same
	// across Restart.
	Endpoint string

	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *testbin.SyncBuffer
	exited chan struct{}
}

// Start seeds and starts a server and kills it when the test ends.
func Start(t testing.TB, keys ...Key) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), dir: t.TempDir()}
	if err := writeSeed(filepath.Join(s.dir, "seed.yaml"), keys); err != nil {
		t.Fatal(err)
	}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("local-kms output:\n%s", s.Output())
		}
		s.Kill()
	})
	return s
}

var startedLine = regexp.MustCompile(`Local KMS started on [^ ]*:(\d+)`)

// start runs the process (on s.port, or a free port chosen by the server
// when it is 0) and waits until it answers.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &testbin.SyncBuffer{}
	cmd := exec.Command(s.bin)
	cmd.Dir = s.dir
	cmd.Env = []string{
		"HOME=" + s.dir,
		"PATH=" + os.Getenv("PATH"),
		"PORT=" + strconv.Itoa(s.port),
		"KMS_ACCOUNT_ID=" + Account,
		"KMS_REGION=" + Region,
		"KMS_DATA_PATH=" + filepath.Join(s.dir, "data"),
		"KMS_SEED_PATH=" + filepath.Join(s.dir, "seed.yaml"),
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.out, s.exited = cmd, out, exited

	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("local-kms exited at start (port %d):\n%s", s.port, out.String())
		default:
		}
		if s.port == 0 {
			if m := startedLine.FindStringSubmatch(out.String()); m != nil {
				s.port, _ = strconv.Atoi(m[1])
				s.Endpoint = "http://127.0.0.1:" + m[1]
			}
		}
		if s.port != 0 && s.Endpoint != "" && ping(s.Endpoint) {
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("local-kms not answering after 20s:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping makes one ListKeys call without the SDK.
func ping(endpoint string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+"/", strings.NewReader("{}"))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService.ListKeys")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Kill ends the process at once (SIGKILL), as a crash or a network cut
// would. Its keys stay on disk for Restart.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart starts the server again on the same port with the same keys.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	var err error
	for range 50 { // the old socket may linger a moment
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restart local-kms on port %d: %v", s.port, err)
}

// Output is what the process has printed so far.
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return s.out.String()
}

// Admin returns an SDK client for setting the scene (DisableKey,
// UpdateAlias, ...), with fixed test credentials and no retries.
func (s *Server) Admin() *awskms.Client {
	return awskms.New(awskms.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDKEYSHIFTTEST", "keyshift-test-secret", ""),
		Retryer:      aws.NopRetryer{},
	})
}

// writeSeed writes local-kms's seed file (YAML) for keys.
func writeSeed(path string, keys []Key) error {
	var b bytes.Buffer
	b.WriteString("Keys:\n  Symmetric:\n    Aes:\n")
	if len(keys) == 0 {
		b.WriteString("      []\n")
	}
	var aliases []string
	for _, k := range keys {
		if k.ID == "" {
			return fmt.Errorf("localkms: a seeded key needs an ID")
		}
		fmt.Fprintf(&b, "      - Metadata:\n          KeyId: %s\n", k.ID)
		if !k.NextRotation.IsZero() {
			fmt.Fprintf(&b, "        NextKeyRotation: %q\n", k.NextRotation.UTC().Format(time.RFC3339))
		}
		backing := k.BackingKeys
		if len(backing) == 0 {
			m := make([]byte, 32)
			_, _ = rand.Read(m)
			backing = [][]byte{m}
		}
		b.WriteString("        BackingKeys:\n")
		for _, m := range backing {
			if len(m) != 32 {
				return fmt.Errorf("localkms: key %s: backing keys are 32 bytes, got %d", k.ID, len(m))
			}
			fmt.Fprintf(&b, "          - %s\n", hex.EncodeToString(m))
		}
		for _, a := range k.Aliases {
			aliases = append(aliases, fmt.Sprintf("  - AliasName: %s\n    TargetKeyId: %s\n", a, k.ID))
		}
	}
	if len(aliases) > 0 {
		b.WriteString("Aliases:\n")
		for _, a := range aliases {
			b.WriteString(a)
		}
	}
	return os.WriteFile(path, b.Bytes(), 0o600)
}

// BackingKeyIndex reads which of a key's materials wrapped a ciphertext,
// from local-kms's own ciphertext layout (a length-prefixed key ARN, then a
// little-endian uint32 material index). Real AWS ciphertext is opaque; this
// exists only to prove in tests that a local-kms rotation happened.
func BackingKeyIndex(ciphertext []byte) (int, bool) {
	if len(ciphertext) < 1 {
		return 0, false
	}
	n := int(ciphertext[0])
	if len(ciphertext) < 1+n+4 {
		return 0, false
	}
	v := ciphertext[1+n : 1+n+4]
	return int(uint32(v[0]) | uint32(v[1])<<8 | uint32(v[2])<<16 | uint32(v[3])<<24), true
}
