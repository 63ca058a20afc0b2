package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keyshift/keyshift/internal/kms"
)

func TestClassify(t *testing.T) {
	resp := func(code int, msgs ...string) error {
		return &vaultapi.ResponseError{HTTPMethod: "PUT", URL: "http://vault/v1/transit/decrypt/app", StatusCode: code, Errors: msgs}
	}
	for _, tc := range []struct {
		name       string
		err        error
		wantKind   error
		wantDetail string
	}{
		{name: "auth failure", err: resp(400, "cipher: message authentication failed"), wantKind: kms.ErrCorrupt, wantDetail: "cipher: message authentication failed"},
		{name: "bad ciphertext", err: resp(400, "invalid ciphertext: no prefix"), wantKind: kms.ErrCorrupt, wantDetail: "invalid ciphertext: no prefix"},
		{name: "key not found", err: resp(400, "encryption key not found"), wantKind: kms.ErrUserInduced, wantDetail: "encryption key not found"},
		{name: "permission denied multierror", err: resp(403, "1 error occurred:\n\t* permission denied\n\n"), wantKind: kms.ErrUserInduced, wantDetail: "permission denied"},
		{name: "too old", err: resp(400, "ciphertext or signature version is disallowed by policy (too old)"), wantKind: kms.ErrUserInduced,
			wantDetail: "the ciphertext's KEK version is below the key's min_decryption_version, so Vault refuses to decrypt it; lower min_decryption_version or rewrap the keyset before raising it (Vault said: ciphertext or signature version is disallowed by policy (too old))"},
		{name: "throttled", err: resp(429, "rate limit quota exceeded"), wantKind: kms.ErrThrottled, wantDetail: "rate limit quota exceeded"},
		{name: "sealed", err: resp(503, "Vault is sealed"), wantKind: kms.ErrUnavailable, wantDetail: "Vault is sealed"},
		{name: "standby not consistent", err: resp(412), wantKind: kms.ErrUnavailable, wantDetail: "Precondition Failed"},
		{name: "internal", err: resp(500, "internal error"), wantKind: kms.ErrUnavailable, wantDetail: "internal error"},
		{name: "raw body", err: &vaultapi.ResponseError{StatusCode: 502, RawError: true, Errors: []string{"<html>token=abc</html>"}}, wantKind: kms.ErrUnavailable, wantDetail: "unparsable answer"},
		{name: "refused", err: fmt.Errorf("Put \"http://127.0.0.1:1/v1/x\": dial tcp 127.0.0.1:1: connect: %w", syscall.ECONNREFUSED), wantKind: kms.ErrUnavailable, wantDetail: "cannot reach Vault: connection refused"},
		{name: "deadline", err: fmt.Errorf("Put: %w", context.DeadlineExceeded), wantKind: kms.ErrUnavailable, wantDetail: "no answer in time"},
		{name: "404 without body", err: errNotFound, wantKind: kms.ErrUserInduced, wantDetail: "not found: check the mount path, the key name and the namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := classify("decrypt", "transit/decrypt/app", tc.err)
			if !errors.Is(e, tc.wantKind) {
				t.Errorf("kind = %v, want %v", e.Kind, tc.wantKind)
			}
			if diff := cmp.Diff(tc.wantDetail, e.Detail); diff != "" {
				t.Errorf("detail (-want +got):\n%s", diff)
			}
			if errors.Is(tc.err, context.DeadlineExceeded) && !errors.Is(e, context.DeadlineExceeded) {
				t.Errorf("%v lost context.DeadlineExceeded", e)
			}
			if e.StatusCode != 0 && e.StatusCode != http.StatusNotFound {
				var re *vaultapi.ResponseError
				if errors.As(tc.err, &re) && re.StatusCode != e.StatusCode {
					t.Errorf("status %d, want %d", e.StatusCode, re.StatusCode)
				}
			}
		})
	}
}

func TestKEKVersion(t *testing.T) {
	for _, tc := range []struct {
		ct, want string
		ok       bool
	}{
		{ct: "vault:v1:abc", want: "1", ok: true},
		{ct: "vault:v12:abc", want: "12", ok: true},
		{ct: "vault:v0:abc"},
		{ct: "vault:v01:abc"},
		{ct: "vault:v-1:abc"},
		{ct: "vault:v1"},
		{ct: "vault:vx:abc"},
		{ct: "garbage"},
		{ct: ""},
	} {
		got, err := kekVersion(tc.ct)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("kekVersion(%q) = %q, %v; want %q, ok=%v", tc.ct, got, err, tc.want, tc.ok)
		}
	}
}
