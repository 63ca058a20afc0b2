package sidecar

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/sidecar/cryptoapi"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// revokedMsg is what a caller is told about a ciphertext under revoked v1.
const revokedMsg = "sidecar: key version revoked: keyset payments v1 is revoked: rewrap the data with Rewrap, or restore it from a backup"

// A revoked version (its key known or suspected compromised) stays loaded
// for Rewrap only. Decrypt, unary and batch, over gRPC and HTTP/JSON,
// refuses a ciphertext under it with FailedPrecondition before opening
// anything, so one forged with the stolen key is refused like a genuine
// one; Rewrap moves the data under the primary; Encrypt uses the primary;
// a MAC under it no longer verifies. Metrics and usage records count the
// refusals under "revoked".
func TestRevokedVersionRewrapsOnly(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	api := e.client.API()
	svc := e.srv.Service()
	c := map[string]string{"tenant": "acme"}
	const secret = "PLAINTEXT-under-v1"
	ct1, err := e.client.Encrypt(ctx, []byte(secret), c)
	if err != nil {
		t.Fatal(err)
	}
	forged := bytes.Clone(ct1)
	forged[len(forged)-1] ^= 1
	macVersion, mac, err := svc.Sign(ctx, "payments", []byte("GET /orders"))
	if err != nil || macVersion != 1 {
		t.Fatalf("Sign = v%d, %v", macVersion, err)
	}
	e.rotate("payments")
	e.revoke("payments", 1)
	e.srv.svc.usage.flush(time.Now())
	uid := int64(os.Getuid())

	for name, ct := range map[string][]byte{"genuine": ct1, "forged": forged} {
		_, err := api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: ct, Context: c})
		if diff := cmp.Diff([]string{"FailedPrecondition", revokedMsg}, []string{status.Code(err).String(), status.Convert(err).Message()}); diff != "" {
			t.Errorf("Decrypt of a %s v1 ciphertext (-want +got):\n%s", name, diff)
		}
	}
	ct2, err := e.client.Encrypt(ctx, []byte("under v2"), c)
	if err != nil || mustHeader(t, ct2).Version != 2 {
		t.Fatalf("Encrypt after the revocation: %v", err)
	}
	dec, err := api.DecryptBatch(ctx, &v1.DecryptBatchRequest{Items: []*v1.DecryptRequest{{Ciphertext: ct1, Context: c}, {Ciphertext: ct2, Context: c}}})
	if err != nil {
		t.Fatal(err)
	}
	d := dec.GetResults()
	got := []string{codes.Code(d[0].GetError().GetCode()).String(), d[0].GetError().GetMessage(), string(d[0].GetOk().GetPlaintext()), string(d[1].GetOk().GetPlaintext())}
	if diff := cmp.Diff([]string{"FailedPrecondition", revokedMsg, "", "under v2"}, got); diff != "" {
		t.Errorf("DecryptBatch (-want +got):\n%s", diff)
	}

	rw, err := api.Rewrap(ctx, &v1.RewrapRequest{Ciphertext: ct1, Context: c})
	if err != nil {
		t.Fatalf("Rewrap of a v1 ciphertext: %v", err)
	}
	rwb, err := api.RewrapBatch(ctx, &v1.RewrapBatchRequest{Items: []*v1.RewrapRequest{{Ciphertext: ct1, Context: c}}})
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*v1.RewrapResponse{"Rewrap": rw, "RewrapBatch": rwb.GetResults()[0].GetOk()} {
		got := fmt.Sprintf("from v%d to v%d, rewrapped %v, header v%d", r.GetFromVersion(), r.GetVersion(), r.GetRewrapped(), mustHeader(t, r.GetCiphertext()).Version)
		if got != "from v1 to v2, rewrapped true, header v2" {
			t.Errorf("%s: %s", name, got)
		}
		if pt, err := e.client.Decrypt(ctx, r.GetCiphertext(), c); err != nil || string(pt) != secret {
			t.Errorf("%s: the rewrapped ciphertext decrypts to %q, %v", name, pt, err)
		}
	}
	if err := svc.Verify(ctx, "payments", 1, []byte("GET /orders"), mac); !errors.Is(err, cryptoapi.ErrRevoked) {
		t.Errorf("Verify of a v1 MAC = %v, want cryptoapi.ErrRevoked", err)
	}

	usage := e.srv.svc.usage.flush(time.Now())
	wantUsage := []UsageRecord{
		{PeerUID: uid, Keyset: "payments", Version: 1, Op: "decrypt", Failed: map[string]uint64{"revoked": 3}},
		{PeerUID: uid, Keyset: "payments", Version: 1, Op: "rewrap", OK: 2},
		{PeerUID: uid, Keyset: "payments", Version: 2, Op: "decrypt", OK: 3},
		{PeerUID: uid, Keyset: "payments", Version: 2, Op: "encrypt", OK: 1},
	}
	if diff := cmp.Diff(wantUsage, usage, cmpopts.IgnoreFields(UsageRecord{}, "From", "To"), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("usage records (-want +got):\n%s", diff)
	}

	// The same over HTTP/JSON.
	b64 := base64.StdEncoding.EncodeToString
	code, m := e.postJSON("/v1/decrypt", `{"ciphertext":"`+b64(ct1)+`","context":{"tenant":"acme"}}`)
	if diff := cmp.Diff([]any{400, "FailedPrecondition", revokedMsg}, []any{code, m["code"], m["message"]}); diff != "" {
		t.Errorf("HTTP decrypt (-want +got):\n%s", diff)
	}
	code, m = e.postJSON("/v1/batch/decrypt", `{"items":[{"ciphertext":"`+b64(ct1)+`","context":{"tenant":"acme"}}]}`)
	want := map[string]any{"results": []any{map[string]any{"error": map[string]any{"code": float64(codes.FailedPrecondition), "message": revokedMsg}}}}
	if diff := cmp.Diff(want, m); diff != "" || code != 200 {
		t.Errorf("HTTP batch decrypt = %d (-want +got):\n%s", code, diff)
	}
	code, m = e.postJSON("/v1/rewrap", `{"ciphertext":"`+b64(ct1)+`","context":{"tenant":"acme"}}`)
	if diff := cmp.Diff([]any{200, float64(1), float64(2), true}, []any{code, m["fromVersion"], m["version"], m["rewrapped"]}); diff != "" {
		t.Errorf("HTTP rewrap (-want +got):\n%s", diff)
	}

	metrics := map[string]float64{}
	for _, series := range []string{
		`keyshift_key_versions_loaded{keyset="payments",state="revoked"}`,
		`keyshift_key_versions_loaded{keyset="payments",state="decrypt-only"}`,
		`keyshift_request_errors_total{op="decrypt",reason="revoked"}`,
		`keyshift_request_errors_total{op="decrypt_batch",reason="revoked"}`,
		`keyshift_request_errors_total{op="verify",reason="revoked"}`,
	} {
		metrics[series] = counterValue(t, e, series)
	}
	wantMetrics := map[string]float64{
		`keyshift_key_versions_loaded{keyset="payments",state="revoked"}`:      1,
		`keyshift_key_versions_loaded{keyset="payments",state="decrypt-only"}`: 0,
		`keyshift_request_errors_total{op="decrypt",reason="revoked"}`:         3,
		`keyshift_request_errors_total{op="decrypt_batch",reason="revoked"}`:   2,
		`keyshift_request_errors_total{op="verify",reason="revoked"}`:          1,
	}
	if diff := cmp.Diff(wantMetrics, metrics); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

// A revoked version is never decryptable again: an older copy of the
// document (v1 still decrypt-only) is ignored as stale, and a newer one
// that puts v1 back to decrypt-only is refused; either way the keyring
// keeps v1 revoked.
func TestRevokedVersionNeverComesBack(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	ct1, err := e.client.Encrypt(ctx, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.rotate("payments")
	before := e.keyset("payments")
	e.revoke("payments", 1)
	stillRevoked := func(when string) {
		t.Helper()
		_, err := e.client.Decrypt(ctx, ct1, nil)
		if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != revokedMsg {
			t.Fatalf("%s: Decrypt of a v1 ciphertext = %v, want FailedPrecondition %q", when, err, revokedMsg)
		}
		if ct, err := e.client.Encrypt(ctx, []byte("x"), nil); err != nil || mustHeader(t, ct).Version != 2 {
			t.Fatalf("%s: Encrypt = %v, want v2", when, err)
		}
	}

	stale := `keyshift_keyring_reloads_total{keyset="payments",result="stale",source="file"}`
	n := counterValue(t, e, stale)
	e.write("payments", before)
	waitUntil(t, func() bool { return counterValue(t, e, stale) > n }, "the older copy counted as stale")
	stillRevoked("after an older copy")

	unrevoked, err := addVersion(e, before) // v3 pending: a newer document, not a copy
	if err != nil {
		t.Fatal(err)
	}
	rejected := `keyshift_keyring_reloads_total{keyset="payments",result="rejected",source="file"}`
	n = counterValue(t, e, rejected)
	e.write("payments", unrevoked)
	waitUntil(t, func() bool { return counterValue(t, e, rejected) > n }, "the un-revoking document rejected")
	if got, want := e.srv.lastError("payments"), "payments v1 moved back from revoked to decrypt-only"; !strings.Contains(got, want) {
		t.Fatalf("last error = %q, want it to contain %q", got, want)
	}
	if _, ok := e.srv.ring.load().sets["payments"].keys[3]; ok {
		t.Fatal("the refused document's v3 was loaded")
	}
	stillRevoked("after a document that un-revokes v1")
}
