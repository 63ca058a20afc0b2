package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/kms"
)

// modes are the two aad bindings, each with the key type that needs it.
var modes = []struct {
	name    string
	derived bool
	want    Binding
}{
	{name: "derived-key-context", derived: true, want: BindContext},
	{name: "aead-key-associated-data", derived: false, want: BindAssociatedData},
}

func randomDEK(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, DEKSize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// wantKind fails unless err wraps kind (and, for a nil kind, unless err is nil).
func wantKind(t *testing.T, err, kind error) {
	t.Helper()
	if kind == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, kind) {
		t.Fatalf("error = %v, want one wrapping %v", err, kind)
	}
	if !strings.HasPrefix(err.Error(), "vault-transit: ") {
		t.Errorf("error %q lacks the vault-transit: prefix", err)
	}
}

func TestTransitAgainstVault(t *testing.T) {
	s := startVault(t)
	token := s.TokenWithPolicy("1h")
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ctx := testContext(t)
			key := "kek-" + m.name
			s.CreateKey(key, m.derived)
			c := newTestClient(t, s, key, WithToken(token))
			aad := []byte("keyset=payments;version=7")

			t.Run("round trip", func(t *testing.T) {
				dek := randomDEK(t)
				w, err := c.Wrap(ctx, dek, aad)
				wantKind(t, err, nil)
				if diff := cmp.Diff("1", w.KEKVersion); diff != "" {
					t.Errorf("KEKVersion (-want +got):\n%s", diff)
				}
				if !bytes.HasPrefix(w.Ciphertext, []byte("vault:v1:")) {
					t.Errorf("ciphertext lacks the vault:v1: prefix")
				}
				got, err := c.Unwrap(ctx, w, aad)
				wantKind(t, err, nil)
				if diff := cmp.Diff(dek, got); diff != "" {
					t.Errorf("unwrapped DEK (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(m.want, c.binding); diff != "" {
					t.Errorf("binding chosen in auto mode (-want +got):\n%s", diff)
				}
			})

			t.Run("empty aad round trip", func(t *testing.T) {
				dek := randomDEK(t)
				w, err := c.Wrap(ctx, dek, nil)
				wantKind(t, err, nil)
				got, err := c.Unwrap(ctx, w, nil)
				wantKind(t, err, nil)
				if diff := cmp.Diff(dek, got); diff != "" {
					t.Errorf("unwrapped DEK (-want +got):\n%s", diff)
				}
				_, err = c.Unwrap(ctx, w, []byte("x"))
				wantKind(t, err, kms.ErrCorrupt)
			})

			t.Run("corrupt", func(t *testing.T) {
				w, err := c.Wrap(ctx, randomDEK(t), aad)
				wantKind(t, err, nil)
				tampered := kms.WrappedKey{Ciphertext: bytes.Clone(w.Ciphertext), KEKVersion: w.KEKVersion}
				i := len(tampered.Ciphertext) - 3
				tampered.Ciphertext[i] ^= 'A' ^ 'B'
				if tampered.Ciphertext[i] == '=' || tampered.Ciphertext[i] == w.Ciphertext[i] {
					tampered.Ciphertext[i] = 'Q'
				}
				for _, tc := range []struct {
					name string
					w    kms.WrappedKey
					aad  []byte
				}{
					{name: "wrong aad", w: w, aad: []byte("keyset=payments;version=8")},
					{name: "missing aad", w: w, aad: nil},
					{name: "tampered ciphertext", w: tampered, aad: aad},
					{name: "not a transit ciphertext", w: kms.WrappedKey{Ciphertext: []byte("garbage"), KEKVersion: "1"}, aad: aad},
					{name: "version mismatch", w: kms.WrappedKey{Ciphertext: w.Ciphertext, KEKVersion: "2"}, aad: aad},
				} {
					t.Run(tc.name, func(t *testing.T) {
						got, err := c.Unwrap(ctx, tc.w, tc.aad)
						wantKind(t, err, kms.ErrCorrupt)
						if got != nil {
							t.Errorf("Unwrap returned %d bytes with an error; want nil", len(got))
						}
					})
				}
			})

			t.Run("datakey", func(t *testing.T) {
				for _, a := range [][]byte{aad, nil} {
					dek, w, err := c.GenerateDataKey(ctx, a)
					wantKind(t, err, nil)
					if len(dek) != DEKSize {
						t.Fatalf("DEK of %d bytes, want %d", len(dek), DEKSize)
					}
					got, err := c.Unwrap(ctx, w, a)
					wantKind(t, err, nil)
					if diff := cmp.Diff(dek, got); diff != "" {
						t.Errorf("unwrapped datakey (-want +got):\n%s", diff)
					}
					_, err = c.Unwrap(ctx, w, []byte("other"))
					wantKind(t, err, kms.ErrCorrupt)

					w2, err := c.GenerateWrappedDataKey(ctx, a)
					wantKind(t, err, nil)
					dek2, err := c.Unwrap(ctx, w2, a)
					wantKind(t, err, nil)
					if len(dek2) != DEKSize || bytes.Equal(dek, dek2) {
						t.Errorf("wrapped-only datakey: %d bytes, equal to the previous: %v", len(dek2), bytes.Equal(dek, dek2))
					}
				}
			})

			t.Run("concurrent use", func(t *testing.T) {
				var wg sync.WaitGroup
				errs := make(chan error, 8)
				for g := range 8 {
					wg.Go(func() {
						for i := range 5 {
							dek := make([]byte, DEKSize)
							dek[0], dek[1] = byte(g), byte(i)
							w, err := c.Wrap(ctx, dek, aad)
							if err != nil {
								errs <- err
								return
							}
							got, err := c.Unwrap(ctx, w, aad)
							if err != nil || !bytes.Equal(got, dek) {
								errs <- fmt.Errorf("goroutine %d round %d: %v (equal %v)", g, i, err, bytes.Equal(got, dek))
								return
							}
						}
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Error(err)
				}
			})

			t.Run("rotate rewrap and retire", func(t *testing.T) {
				rkey := key + "-rot"
				s.CreateKey(rkey, m.derived)
				c := newTestClient(t, s, rkey, WithToken(token))
				dek := randomDEK(t)
				old, err := c.Wrap(ctx, dek, aad)
				wantKind(t, err, nil)

				v, err := c.Rotate(ctx)
				wantKind(t, err, nil)
				primary, err := c.PrimaryKEKVersion(ctx)
				wantKind(t, err, nil)
				if diff := cmp.Diff([]string{"2", "2"}, []string{v, primary}); diff != "" {
					t.Errorf("Rotate, PrimaryKEKVersion (-want +got):\n%s", diff)
				}

				got, err := c.Unwrap(ctx, old, aad)
				wantKind(t, err, nil)
				if diff := cmp.Diff(dek, got); diff != "" {
					t.Errorf("old ciphertext after rotation (-want +got):\n%s", diff)
				}
				fresh, err := c.Wrap(ctx, dek, aad)
				wantKind(t, err, nil)
				if diff := cmp.Diff("2", fresh.KEKVersion); diff != "" {
					t.Errorf("KEKVersion after rotation (-want +got):\n%s", diff)
				}

				rewrapped, err := c.Rewrap(ctx, old, aad)
				wantKind(t, err, nil)
				if diff := cmp.Diff("2", rewrapped.KEKVersion); diff != "" {
					t.Errorf("rewrapped KEKVersion (-want +got):\n%s", diff)
				}
				_, err = c.Rewrap(ctx, old, []byte("wrong"))
				wantKind(t, err, kms.ErrCorrupt)

				s.Write("transit/keys/"+rkey+"/config", map[string]any{"min_decryption_version": 2})
				info, err := c.KeyInfo(ctx)
				wantKind(t, err, nil)
				wantInfo := KeyInfo{Name: rkey, Type: "aes256-gcm96", Derived: m.derived, LatestVersion: 2, MinDecryptionVersion: 2}
				if diff := cmp.Diff(wantInfo, info); diff != "" {
					t.Errorf("KeyInfo (-want +got):\n%s", diff)
				}

				_, err = c.Unwrap(ctx, old, aad)
				wantKind(t, err, kms.ErrUserInduced)
				if !strings.Contains(err.Error(), "min_decryption_version") {
					t.Errorf("error %q does not name min_decryption_version", err)
				}
				got, err = c.Unwrap(ctx, rewrapped, aad)
				wantKind(t, err, nil)
				if diff := cmp.Diff(dek, got); diff != "" {
					t.Errorf("rewrapped DEK after retiring v1 (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestUserInducedErrors(t *testing.T) {
	s := startVault(t)
	ctx := testContext(t)
	token := s.TokenWithPolicy("1h")
	s.CreateKey("app", true)
	s.Write("transit/keys/rsa", map[string]any{"type": "rsa-2048"})
	dek := randomDEK(t)
	good, err := newTestClient(t, s, "app", WithToken(token)).Wrap(ctx, dek, nil)
	wantKind(t, err, nil)

	for _, tc := range []struct {
		name   string
		key    string
		opts   []Option
		detail string
	}{
		{name: "bad token", key: "app", opts: []Option{WithToken("hvs.not-a-real-token")}, detail: "permission denied"},
		{name: "revoked token file", key: "app", opts: []Option{WithTokenFile(writeFile(t, "hvs.revoked"))}, detail: "permission denied"},
		{name: "missing token file", key: "app", opts: []Option{WithTokenFile(t.TempDir() + "/none")}, detail: "no such file"},
		{name: "missing key", key: "nokey", opts: []Option{WithToken(token)}, detail: "not found"},
		// Without the read, encrypt would create the key (Transit upsert); the
		// least-privilege policy grants no "create", so Vault refuses.
		{name: "missing key explicit binding", key: "nokey", opts: []Option{WithToken(token), WithBinding(BindContext)}, detail: "permission denied"},
		{name: "missing mount", key: "app", opts: []Option{WithToken(token), WithMount("nosuch")}, detail: "permission denied"},
		{name: "key type without aad", key: "rsa", opts: []Option{WithToken(rootToken)}, detail: "can bind no aad"},
		{name: "derived key used as plain", key: "app", opts: []Option{WithToken(token), WithBinding(BindAssociatedData)}, detail: "context"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, s, tc.key, tc.opts...)
			_, err := c.Wrap(ctx, dek, []byte("aad"))
			if tc.name == "derived key used as plain" {
				_, err = c.Unwrap(ctx, good, nil)
			}
			wantKind(t, err, kms.ErrUserInduced)
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q does not contain %q", err, tc.detail)
			}
		})
	}

	t.Run("token file re-read after the token is revoked", func(t *testing.T) {
		path := writeFile(t, token+"\n")
		c := newTestClient(t, s, "app", WithTokenFile(path))
		w, err := c.Wrap(ctx, dek, nil)
		wantKind(t, err, nil)
		fresh := s.TokenWithPolicy("1h")
		if err := os.WriteFile(path, []byte(fresh), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := s.RootClient().Auth().Token().RevokeOrphan(token); err != nil {
			t.Fatal(err)
		}
		got, err := c.Unwrap(ctx, w, nil)
		wantKind(t, err, nil)
		if diff := cmp.Diff(dek, got); diff != "" {
			t.Errorf("unwrap with the re-read token (-want +got):\n%s", diff)
		}
		if c.api.Token() != fresh {
			t.Errorf("client did not switch to the token now in the file")
		}
	})

	t.Run("missing key is not created by Wrap", func(t *testing.T) {
		sec, err := s.RootClient().Logical().Read("transit/keys/nokey")
		if err != nil || sec != nil {
			t.Errorf("transit/keys/nokey after failed Wraps: %v, %v; want no key", sec, err)
		}
	})
}

func TestServerKilledAndRestarted(t *testing.T) {
	s := startVault(t)
	ctx := testContext(t)
	s.CreateKey("app", true)
	var retries []RetryEvent
	c := newTestClient(t, s, "app", WithToken(rootToken), WithTimeout(500*time.Millisecond),
		WithRetry(RetryPolicy{MaxAttempts: 3, BaseDelay: 50 * time.Millisecond, MaxDelay: 200 * time.Millisecond,
			OnRetry: func(e RetryEvent) { retries = append(retries, e) }}))
	dek := randomDEK(t)
	w, err := c.Wrap(ctx, dek, nil)
	wantKind(t, err, nil)

	t.Run("stopped process times out", func(t *testing.T) {
		s.Signal(syscall.SIGSTOP)
		defer s.Signal(syscall.SIGCONT)
		retries = nil
		start := time.Now()
		_, err := c.Unwrap(ctx, w, nil)
		took := time.Since(start)
		wantKind(t, err, kms.ErrUnavailable)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
		}
		// 3 attempts of 500ms plus at most 150ms of backoff, with slack for a busy machine.
		if took > 3*time.Second {
			t.Errorf("Unwrap took %v with the server stopped; want about 1.6s", took)
		}
		if len(retries) != 2 {
			t.Errorf("%d retries, want 2", len(retries))
		}
	})

	t.Run("killed process is unavailable", func(t *testing.T) {
		got, err := c.Unwrap(ctx, w, nil) // after SIGCONT the server answers again
		wantKind(t, err, nil)
		if diff := cmp.Diff(dek, got); diff != "" {
			t.Fatalf("unwrap after SIGCONT (-want +got):\n%s", diff)
		}
		s.Kill()
		start := time.Now()
		_, err = c.Unwrap(ctx, w, nil)
		wantKind(t, err, kms.ErrUnavailable)
		if !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("error %q does not say connection refused", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Unwrap took %v against a dead server; want well under the 500ms timeout x 3", took)
		}
	})

	t.Run("restarted server works once the key is recreated", func(t *testing.T) {
		s.Restart() // dev mode keeps nothing: the key and its old ciphertexts are gone
		_, err := c.Unwrap(ctx, w, nil)
		wantKind(t, err, kms.ErrUserInduced)
		s.CreateKey("app", true)
		w2, err := c.Wrap(ctx, dek, nil)
		wantKind(t, err, nil)
		got, err := c.Unwrap(ctx, w2, nil)
		wantKind(t, err, nil)
		if diff := cmp.Diff(dek, got); diff != "" {
			t.Errorf("unwrap after restart (-want +got):\n%s", diff)
		}
	})
}

// TestLogsHoldNoSecrets runs every operation with a debug JSON logger and
// checks that neither the log nor any error shows the token, a DEK (hex or
// any base64) or a wrapped key.
func TestLogsHoldNoSecrets(t *testing.T) {
	s := startVault(t)
	ctx := testContext(t)
	token := s.TokenWithPolicy("1h")
	s.CreateKey("app", true)
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := newTestClient(t, s, "app", WithToken(token), WithLogger(log))

	var secrets [][]byte
	var errs []error
	aad := []byte("keyset=payments")
	dek := randomDEK(t)
	w, err := c.Wrap(ctx, dek, aad)
	wantKind(t, err, nil)
	dek2, w2, err := c.GenerateDataKey(ctx, aad)
	wantKind(t, err, nil)
	_, err = c.Rotate(ctx)
	wantKind(t, err, nil)
	w3, err := c.Rewrap(ctx, w, aad)
	wantKind(t, err, nil)
	_, err = c.Unwrap(ctx, w3, aad)
	wantKind(t, err, nil)
	_, err = c.Unwrap(ctx, w2, []byte("wrong"))
	errs = append(errs, err)
	_, err = c.Unwrap(ctx, kms.WrappedKey{Ciphertext: append(bytes.Clone(w.Ciphertext), 'x')}, aad)
	errs = append(errs, err)
	bad := newTestClient(t, s, "app", WithToken(token+"x"), WithLogger(log))
	_, err = bad.Wrap(ctx, dek, aad)
	errs = append(errs, err)
	if logs.Len() == 0 || !strings.Contains(logs.String(), `"op":"encrypt"`) {
		t.Fatalf("debug log has no encrypt entry:\n%s", logs.String())
	}

	secrets = append(secrets, []byte(token), []byte(token+"x"), dek, dek2, w.Ciphertext, w2.Ciphertext, w3.Ciphertext)
	text := logs.String()
	for _, e := range errs {
		if e == nil {
			t.Fatal("an operation meant to fail succeeded")
		}
		text += "\n" + e.Error()
	}
	for i, sec := range secrets {
		for _, form := range []string{
			string(sec), hex.EncodeToString(sec),
			base64.StdEncoding.EncodeToString(sec), base64.RawStdEncoding.EncodeToString(sec),
			base64.URLEncoding.EncodeToString(sec), base64.RawURLEncoding.EncodeToString(sec),
		} {
			if strings.Contains(text, form) {
				t.Errorf("secret %d appears in the log or an error as %q", i, form)
			}
		}
	}
}
