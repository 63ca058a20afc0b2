package vault

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/testbin"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// serviceAccountJWT makes a JWT shaped like a Kubernetes projected
// service-account token, signed with a throwaway ES256 key (Vault checks the
// signature only when configured with public keys; the TokenReview API is
// the authority).
func serviceAccountJWT(t *testing.T, namespace, name, uid string) string {
	t.Helper()
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": "JWT", "kid": "test"})
	now := time.Now().Unix()
	claims, _ := json.Marshal(map[string]any{
		"iss": "https://kubernetes.default.svc.cluster.local",
		"sub": "system:serviceaccount:" + namespace + ":" + name,
		"aud": []string{"vault"},
		"iat": now, "nbf": now, "exp": now + 3600,
		"kubernetes.io": map[string]any{
			"namespace":      namespace,
			"serviceaccount": map[string]string{"name": name, "uid": uid},
		},
	})
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + enc.EncodeToString(sig)
}

// tokenReviewAPI is a loopback stand-in for the Kubernetes API server's
// TokenReview endpoint, the one call Vault's Kubernetes auth method makes.
// It accepts exactly one JWT, for system:serviceaccount:NS:NAME, and records
// every review.
type tokenReviewAPI struct {
	t                   *testing.T
	jwt, reviewer       string
	namespace, name, id string

	mu      sync.Mutex
	reviews []string // the tokens Vault asked about
}

func (a *tokenReviewAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if got := r.Header.Get("Authorization"); got != "Bearer "+a.reviewer {
		http.Error(w, `{"kind":"Status","status":"Failure","code":401}`, http.StatusUnauthorized)
		return
	}
	var req struct {
		Spec struct {
			Token     string   `json:"token"`
			Audiences []string `json:"audiences"`
		} `json:"spec"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "bad TokenReview", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.reviews = append(a.reviews, req.Spec.Token)
	a.mu.Unlock()
	status := map[string]any{"authenticated": false, "error": "token not valid"}
	if req.Spec.Token == a.jwt {
		status = map[string]any{
			"authenticated": true,
			"user": map[string]any{
				"username": "system:serviceaccount:" + a.namespace + ":" + a.name,
				"uid":      a.id,
				"groups":   []string{"system:serviceaccounts"},
			},
			// The JWT is issued for "vault"; echo the audiences asked for when they match.
			"audiences": slices.DeleteFunc(slices.Clone(req.Spec.Audiences), func(a string) bool { return a != "vault" }),
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})
}

func (a *tokenReviewAPI) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.reviews...)
}

// TestKubernetesAuth logs in through the real Vault Kubernetes auth method,
// configured against a loopback TokenReview API: Vault parses the JWT our
// client posts, asks the API about it and issues a token with the role's
// policy and a short TTL, which the client renews and then replaces by
// logging in again.
func TestKubernetesAuth(t *testing.T) {
	s := startVault(t)
	ctx := testContext(t)
	jwt := serviceAccountJWT(t, "payments", "keyshift", "uid-1234")
	api := &tokenReviewAPI{t: t, jwt: jwt, reviewer: serviceAccountJWT(t, "vault", "token-reviewer", "uid-9"), namespace: "payments", name: "keyshift", id: "uid-1234"}
	k8s := httptest.NewTLSServer(api) // HTTPS, as a real API server; Vault trusts its certificate
	t.Cleanup(k8s.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k8s.Certificate().Raw})

	s.WritePolicy()
	if err := s.RootClient().Sys().EnableAuthWithOptions("k8s-prod", &vaultapi.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	s.Write("auth/k8s-prod/config", map[string]any{
		"kubernetes_host":      k8s.URL,
		"token_reviewer_jwt":   api.reviewer,
		"kubernetes_ca_cert":   string(caPEM),
		"disable_local_ca_jwt": true,
	})
	s.Write("auth/k8s-prod/role/keyshift", map[string]any{
		"bound_service_account_names":      "keyshift",
		"bound_service_account_namespaces": "payments",
		"token_policies":                   "keyshift",
		"token_ttl":                        "4s",
		"token_max_ttl":                    "8s",
	})
	s.CreateKey("app", true)
	jwtFile := writeFile(t, jwt+"\n")

	t.Run("login, use, renew and log in again", func(t *testing.T) {
		var logs testbin.SyncBuffer
		log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c := newTestClient(t, s, "app", WithLogger(log), WithKubernetesAuth(KubernetesAuth{Role: "keyshift", TokenFile: jwtFile, Mount: "k8s-prod"}))
		dek := randomDEK(t)
		w, err := c.Wrap(ctx, dek, []byte("aad"))
		wantKind(t, err, nil)
		if diff := cmp.Diff([]string{jwt}, api.seen()); diff != "" {
			t.Errorf("tokens reviewed after the first login (-want +got):\n%s", diff)
		}
		first := c.api.Token()

		// The token lives at most 8s; the watcher renews it, then logs in again.
		deadline := time.Now().Add(20 * time.Second)
		for len(api.seen()) < 2 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if n := len(api.seen()); n < 2 {
			t.Fatalf("%d logins after the token's max TTL passed, want at least 2", n)
		}
		got, err := c.Unwrap(ctx, w, []byte("aad"))
		wantKind(t, err, nil)
		if diff := cmp.Diff(dek, got); diff != "" {
			t.Errorf("unwrap after re-login (-want +got):\n%s", diff)
		}
		if c.api.Token() == first {
			t.Errorf("token unchanged after re-login")
		}
		for _, msg := range []string{"vault-transit: logged in with Kubernetes auth", "vault-transit: token renewed", "vault-transit: token renewal ended; authenticating again"} {
			if !strings.Contains(logs.String(), `"msg":"`+msg+`"`) {
				t.Errorf("log lacks %q:\n%s", msg, logs.String())
			}
		}
	})

	t.Run("revoked token: log in again on 403", func(t *testing.T) {
		c := newTestClient(t, s, "app", WithKubernetesAuth(KubernetesAuth{Role: "keyshift", TokenFile: jwtFile, Mount: "k8s-prod"}))
		before := len(api.seen())
		_, err := c.PrimaryKEKVersion(ctx)
		wantKind(t, err, nil)
		if err := s.RootClient().Auth().Token().RevokeOrphan(c.api.Token()); err != nil {
			t.Fatal(err)
		}
		_, err = c.PrimaryKEKVersion(ctx)
		wantKind(t, err, nil)
		if got := len(api.seen()) - before; got != 2 {
			t.Errorf("%d logins, want 2 (first use, then after the revocation)", got)
		}
	})

	for _, tc := range []struct {
		name   string
		auth   KubernetesAuth
		detail string
	}{
		{name: "unknown role", auth: KubernetesAuth{Role: "nobody", TokenFile: jwtFile, Mount: "k8s-prod"}, detail: `role "nobody"`},
		{name: "token the API rejects", auth: KubernetesAuth{Role: "keyshift", TokenFile: writeFile(t, serviceAccountJWT(t, "payments", "keyshift", "uid-1234")), Mount: "k8s-prod"}, detail: "permission denied"},
		{name: "wrong namespace", auth: KubernetesAuth{Role: "keyshift", TokenFile: writeFile(t, serviceAccountJWT(t, "other", "keyshift", "uid-1")), Mount: "k8s-prod"}, detail: "namespace not authorized"},
		{name: "missing JWT file", auth: KubernetesAuth{Role: "keyshift", TokenFile: "/nonexistent/token", Mount: "k8s-prod"}, detail: "no such file"},
		{name: "wrong auth mount", auth: KubernetesAuth{Role: "keyshift", TokenFile: jwtFile, Mount: "kubernetes"}, detail: "auth/kubernetes/login"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, s, "app", WithKubernetesAuth(tc.auth))
			_, err := c.Wrap(ctx, randomDEK(t), nil)
			wantKind(t, err, kms.ErrUserInduced)
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q does not contain %q", err, tc.detail)
			}
		})
	}
}

// TestKubernetesLoginRequest checks the login request on the wire against a
// loopback handler, for what a dev server cannot show: a custom auth mount
// with slashes and a Vault namespace header.
func TestKubernetesLoginRequest(t *testing.T) {
	type seen struct {
		Method, Path, Namespace, Token string
		Body                           map[string]string
	}
	var (
		mu   sync.Mutex
		reqs []seen
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]string
		_ = json.Unmarshal(b, &body)
		mu.Lock()
		reqs = append(reqs, seen{r.Method, r.URL.Path, r.Header.Get("X-Vault-Namespace"), r.Header.Get("X-Vault-Token"), body})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/auth/clusters/east/login":
			_, _ = io.WriteString(w, `{"auth":{"client_token":"hvs.issued","accessor":"a","policies":["keyshift"],"lease_duration":0,"renewable":false}}`)
		case "/v1/transit/keys/app":
			_, _ = io.WriteString(w, `{"data":{"type":"aes256-gcm96","derived":true,"latest_version":3,"min_decryption_version":1,"min_encryption_version":0}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"errors":[]}`)
		}
	}))
	t.Cleanup(srv.Close)

	c, err := New("app", WithAddress(srv.URL), WithNamespace("team-a/prod"),
		WithKubernetesAuth(KubernetesAuth{Role: "keyshift", TokenFile: writeFile(t, "header.payload.sig\n"), Mount: "/clusters/east/"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	v, err := c.PrimaryKEKVersion(testContext(t))
	wantKind(t, err, nil)
	if v != "3" {
		t.Errorf("PrimaryKEKVersion = %q, want 3", v)
	}
	want := []seen{
		{Method: "PUT", Path: "/v1/auth/clusters/east/login", Namespace: "team-a/prod", Body: map[string]string{"role": "keyshift", "jwt": "header.payload.sig"}},
		{Method: "GET", Path: "/v1/transit/keys/app", Namespace: "team-a/prod", Token: "hvs.issued"},
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(want, reqs); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}
