package vault

import (
	"errors"
	"net/url"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/kms"
)

// parsed is what a URI and environment configure, for comparison.
type parsed struct {
	Key, Mount, Namespace, Token, TokenFile string
	K8s                                     *KubernetesAuth
	Binding                                 Binding
}

func parseForTest(t *testing.T, uri string, env map[string]string) (parsed, error) {
	t.Helper()
	u, err := kms.ParseURI(uri)
	if err != nil {
		return parsed{}, err
	}
	key, opts, err := parseURI(u, func(k string) string { return env[k] })
	if err != nil {
		return parsed{}, err
	}
	var cfg config
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return parsed{}, err
		}
	}
	return parsed{Key: key, Mount: cfg.mount, Namespace: cfg.namespace, Token: cfg.token, TokenFile: cfg.tokenFile, K8s: cfg.k8s, Binding: cfg.binding}, nil
}

func TestParseURI(t *testing.T) {
	tokenEnv := map[string]string{"VAULT_TOKEN": "hvs.env", "HOME": "/home/op"}
	for _, tc := range []struct {
		uri     string
		env     map[string]string
		want    parsed
		wantErr error
	}{
		{uri: "vault-transit://transit/app", env: tokenEnv, want: parsed{Key: "app", Mount: "transit", Token: "hvs.env"}},
		{uri: "vault-transit://kms/app", env: tokenEnv, want: parsed{Key: "app", Mount: "kms", Token: "hvs.env"}},
		{uri: "vault-transit:///app", env: tokenEnv, want: parsed{Key: "app", Mount: "transit", Token: "hvs.env"}},
		{uri: "vault-transit:///teams/payments/transit/app-kek", env: tokenEnv, want: parsed{Key: "app-kek", Mount: "teams/payments/transit", Token: "hvs.env"}},
		{uri: "vault-transit://transit/app?namespace=team-a/prod&aad=context", env: tokenEnv,
			want: parsed{Key: "app", Mount: "transit", Namespace: "team-a/prod", Token: "hvs.env", Binding: BindContext}},
		{uri: "vault-transit://transit/app?role=keyshift", env: tokenEnv,
			want: parsed{Key: "app", Mount: "transit", K8s: &KubernetesAuth{Role: "keyshift", TokenFile: DefaultServiceAccountTokenFile, Mount: "kubernetes"}}},
		{uri: "vault-transit://transit/app?role=keyshift&auth_mount=clusters/east&jwt_file=/var/run/vault/token", env: nil,
			want: parsed{Key: "app", Mount: "transit", K8s: &KubernetesAuth{Role: "keyshift", TokenFile: "/var/run/vault/token", Mount: "clusters/east"}}},
		{uri: "vault-transit://transit/app?token_file=/vault/agent/token", env: map[string]string{"HOME": "/home/op"},
			want: parsed{Key: "app", Mount: "transit", TokenFile: "/vault/agent/token"}},
		{uri: "vault-transit://transit/app", env: map[string]string{"HOME": "/home/op"},
			want: parsed{Key: "app", Mount: "transit", TokenFile: "/home/op/.vault-token"}},

		{uri: "vault-transit://transit/", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/a/b", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit:8200/app", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://user@transit/app", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/app?nmespace=x", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/app?aad=both", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/app?role=a&role=b", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/app?jwt_file=/x", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/app?role=r&token_file=/x", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/app?token_file=/x", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/app", env: nil, wantErr: kms.ErrBadURI},
		{uri: "vault-transit:///../app", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "vault-transit://transit/app%2Fx", env: tokenEnv, wantErr: kms.ErrBadURI},
		{uri: "aws-kms://transit/app", env: tokenEnv, wantErr: kms.ErrBadURI},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			got, err := parseForTest(t, tc.uri, tc.env)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parsed (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  string
		opts []Option
	}{
		{name: "no credentials", key: "app"},
		{name: "two credentials", key: "app", opts: []Option{WithToken("a"), WithTokenFile("/b")}},
		{name: "bad key name", key: "a/b", opts: []Option{WithToken("a")}},
		{name: "bad address", key: "app", opts: []Option{WithToken("a"), WithAddress("vault:8200")}},
		{name: "zero timeout", key: "app", opts: []Option{WithToken("a"), WithTimeout(0)}},
		{name: "no attempts", key: "app", opts: []Option{WithToken("a"), WithRetry(RetryPolicy{})}},
		{name: "k8s without role", key: "app", opts: []Option{WithKubernetesAuth(KubernetesAuth{})}},
		{name: "bad mount", key: "app", opts: []Option{WithToken("a"), WithMount("a//b")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.key, tc.opts...)
			wantKind(t, err, kms.ErrBadURI)
		})
	}
}

func TestOpen(t *testing.T) {
	t.Setenv("VAULT_ADDR", "http://127.0.0.1:1")
	t.Setenv("VAULT_TOKEN", "hvs.from-env")
	w, err := Open(t.Context(), &url.URL{Scheme: Scheme, Host: "transit", Path: "/app"})
	if err != nil {
		t.Fatal(err)
	}
	c := w.(*Client)
	t.Cleanup(func() { _ = c.Close() })
	if diff := cmp.Diff([]string{"vault-transit:///transit/app", "http://127.0.0.1:1", ""}, []string{c.String(), c.api.Address(), c.api.Token()}); diff != "" {
		t.Errorf("String, address, token before first use (-want +got):\n%s", diff)
	}
}
