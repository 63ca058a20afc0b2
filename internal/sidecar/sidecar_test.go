package sidecar

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/sidecar/cryptoapi"
	"github.com/keyshift/keyshift/internal/testbin"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGRPCRoundTripOverSocket(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	st, err := os.Stat(e.cfg.Socket)
	if err != nil || st.Mode().Perm() != 0o660 || st.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode = %v, %v; want socket 0660", st.Mode(), err)
	}
	c := map[string]string{"tenant": "acme"}
	ct, err := e.client.Encrypt(ctx, []byte("card 4111"), c)
	if err != nil {
		t.Fatal(err)
	}
	h, _, err := envelope.Parse(ct)
	if err != nil || h.Keyset != "payments" || h.Version != 1 {
		t.Fatalf("header %+v, %v", h, err)
	}
	pt, err := e.client.Decrypt(ctx, ct, c)
	if err != nil || string(pt) != "card 4111" {
		t.Fatalf("Decrypt = %q, %v", pt, err)
	}
	same, rewrapped, err := e.client.Rewrap(ctx, ct, c)
	if err != nil || rewrapped || !bytes.Equal(same, ct) {
		t.Fatalf("Rewrap under the primary = rewrapped %v, %v", rewrapped, err)
	}
	e.rotate("payments")
	ct2, rewrapped, err := e.client.Rewrap(ctx, ct, c)
	if err != nil || !rewrapped {
		t.Fatalf("Rewrap after rotation = rewrapped %v, %v", rewrapped, err)
	}
	if h, _, _ := envelope.Parse(ct2); h.Version != 2 {
		t.Fatalf("rewrapped to v%d, want v2", h.Version)
	}
	if bytes.Contains(ct2, []byte("card")) {
		t.Fatal("rewrap leaked plaintext")
	}
	for _, x := range [][]byte{ct, ct2} {
		if pt, err := e.client.Decrypt(ctx, x, c); err != nil || string(pt) != "card 4111" {
			t.Fatalf("Decrypt after rotation = %q, %v", pt, err)
		}
	}
	s, err := e.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, v := range s.GetKeysets()[0].GetVersions() {
		got = append(got, fmt.Sprintf("v%d:%s:kek%s", v.GetVersion(), v.GetState(), v.GetKekVersion()))
	}
	if diff := cmp.Diff([]string{"v1:decrypt-only:kek1", "v2:primary:kek1"}, got); diff != "" || !s.GetReady() || s.GetKeysets()[0].GetPrimary() != 2 {
		t.Fatalf("status (-want +got):\n%s\n%v", diff, s)
	}
	// Health over the same socket.
	conn, _ := grpc.NewClient("unix://"+e.cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "keyshift.v1.Crypto"})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", hr, err)
	}
}

func TestBatch(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	api := e.client.API()
	enc, err := api.EncryptBatch(ctx, &v1.EncryptBatchRequest{Items: []*v1.EncryptRequest{
		{Plaintext: []byte("a")}, {Keyset: "nope", Plaintext: []byte("b")}, {Plaintext: []byte("c"), Context: map[string]string{"k": "v"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := enc.GetResults()
	if r[0].GetOk() == nil || r[2].GetOk() == nil || codes.Code(r[1].GetError().GetCode()) != codes.NotFound {
		t.Fatalf("results = %v", r)
	}
	dec, err := api.DecryptBatch(ctx, &v1.DecryptBatchRequest{Items: []*v1.DecryptRequest{
		{Ciphertext: r[0].GetOk().GetCiphertext()},
		{Ciphertext: r[2].GetOk().GetCiphertext()}, // context missing
		{Ciphertext: []byte("junk")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	d := dec.GetResults()
	got := []string{string(d[0].GetOk().GetPlaintext()), d[1].GetError().GetMessage(), codes.Code(d[2].GetError().GetCode()).String()}
	if diff := cmp.Diff([]string{"a", "decryption failed", "InvalidArgument"}, got); diff != "" {
		t.Fatalf("decrypt batch (-want +got):\n%s", diff)
	}
	rw, err := api.RewrapBatch(ctx, &v1.RewrapBatchRequest{Items: []*v1.RewrapRequest{{Ciphertext: r[0].GetOk().GetCiphertext()}}})
	if err != nil || rw.GetResults()[0].GetOk().GetFromVersion() != 1 {
		t.Fatalf("rewrap batch = %v, %v", rw, err)
	}
	big := &v1.EncryptBatchRequest{}
	for range cryptoapi.MaxBatch + 1 {
		big.Items = append(big.Items, &v1.EncryptRequest{})
	}
	if _, err := api.EncryptBatch(ctx, big); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "split the batch") {
		t.Fatalf("oversized batch: %v", err)
	}
}

// A batch seals its items under one seed per keyset (envelope.Sealer) and
// every item still opens on its own, in a batch of mixed seeds and
// keysets too; unary calls each draw their own seed.
func TestBatchSharesASeedPerKeyset(t *testing.T) {
	e := newEnv(t, withKeysets("payments", "orders"))
	ctx := ctxT(t)
	api := e.client.API()
	req := &v1.EncryptBatchRequest{}
	for i := range 6 {
		ks := []string{"payments", "orders"}[i%2]
		req.Items = append(req.Items, &v1.EncryptRequest{Keyset: ks, Plaintext: []byte(fmt.Sprint(ks, i)), Context: map[string]string{"i": fmt.Sprint(i)}})
	}
	enc, err := api.EncryptBatch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	seeds := map[string]map[[envelope.SeedSize]byte]bool{}
	dreq := &v1.DecryptBatchRequest{}
	for i, r := range enc.GetResults() {
		ct := r.GetOk().GetCiphertext()
		h, _, err := envelope.Parse(ct)
		if err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
		if seeds[h.Keyset] == nil {
			seeds[h.Keyset] = map[[envelope.SeedSize]byte]bool{}
		}
		seeds[h.Keyset][h.Seed] = true
		dreq.Items = append(dreq.Items, &v1.DecryptRequest{Ciphertext: ct, Context: req.Items[i].Context})
	}
	if len(seeds["payments"]) != 1 || len(seeds["orders"]) != 1 {
		t.Fatalf("seeds per keyset in one batch: %d payments, %d orders; want 1 each", len(seeds["payments"]), len(seeds["orders"]))
	}
	one, err := api.Encrypt(ctx, &v1.EncryptRequest{Keyset: "payments", Plaintext: []byte("unary")})
	if err != nil {
		t.Fatal(err)
	}
	two, err := api.Encrypt(ctx, &v1.EncryptRequest{Keyset: "payments", Plaintext: []byte("unary")})
	if err != nil {
		t.Fatal(err)
	}
	h1, _, _ := envelope.Parse(one.GetCiphertext())
	h2, _, _ := envelope.Parse(two.GetCiphertext())
	if h1.Seed == h2.Seed || seeds["payments"][h1.Seed] {
		t.Fatal("a unary encrypt reused a seed")
	}
	// Interleave another seed and a wrong context into the batch.
	dreq.Items = append(dreq.Items, &v1.DecryptRequest{Ciphertext: one.GetCiphertext()},
		&v1.DecryptRequest{Ciphertext: dreq.Items[0].Ciphertext, Context: map[string]string{"i": "wrong"}},
		dreq.Items[2])
	dec, err := api.DecryptBatch(ctx, dreq)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range dec.GetResults() {
		if r.GetOk() != nil {
			got = append(got, string(r.GetOk().GetPlaintext()))
		} else {
			got = append(got, r.GetError().GetMessage())
		}
	}
	want := []string{"payments0", "orders1", "payments2", "orders3", "payments4", "orders5", "unary", "decryption failed", "payments2"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("decrypt batch (-want +got):\n%s", diff)
	}
}

// Every bad input gets a specific code and message, and the keyring keeps
// serving afterwards.
func TestBadInputErrors(t *testing.T) {
	e := newEnv(t, withKeysets("payments", "orders"))
	ctx := ctxT(t)
	api := e.client.API()
	good, err := api.Encrypt(ctx, &v1.EncryptRequest{Keyset: "payments", Plaintext: []byte("x"), Context: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	ct := good.GetCiphertext()
	withVersion := func(v byte) []byte {
		c := bytes.Clone(ct)
		c[2+len("payments")+3] = v
		return c
	}
	tampered := bytes.Clone(ct)
	tampered[len(tampered)-1] ^= 1
	cases := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"malformed ciphertext", func() error {
			_, err := api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: []byte{1, 2, 3}})
			return err
		}, codes.InvalidArgument, "malformed ciphertext"},
		{"unsupported format", func() error {
			_, err := api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: append([]byte{9}, ct[1:]...)})
			return err
		}, codes.InvalidArgument, "unsupported ciphertext format"},
		{"wrong context", func() error {
			_, err := api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: ct, Context: map[string]string{"a": "c"}})
			return err
		}, codes.InvalidArgument, "decryption failed"},
		{"tampered", func() error {
			_, err := api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: tampered, Context: map[string]string{"a": "b"}})
			return err
		}, codes.InvalidArgument, "decryption failed"},
		{"unknown key version", func() error {
			_, err := api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: withVersion(9)})
			return err
		}, codes.NotFound, "payments v9 is not loaded"},
		{"unknown keyset", func() error {
			_, err := api.Encrypt(ctx, &v1.EncryptRequest{Keyset: "billing"})
			return err
		}, codes.NotFound, `unknown keyset "billing"`},
		{"keyset required", func() error {
			_, err := api.Encrypt(ctx, &v1.EncryptRequest{Plaintext: []byte("x")})
			return err
		}, codes.InvalidArgument, "serves 2 keysets"},
		{"bad context", func() error {
			_, err := api.Encrypt(ctx, &v1.EncryptRequest{Keyset: "orders", Context: map[string]string{"": "v"}})
			return err
		}, codes.InvalidArgument, "bad encryption context: empty key"},
		{"too large", func() error {
			_, err := api.Encrypt(ctx, &v1.EncryptRequest{Keyset: "orders", Plaintext: make([]byte, envelope.MaxPlaintext+1)})
			return err
		}, codes.InvalidArgument, "plaintext too large"},
		{"rewrap wrong context", func() error {
			_, err := api.Rewrap(ctx, &v1.RewrapRequest{Ciphertext: ct})
			return err
		}, codes.InvalidArgument, "decryption failed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if status.Code(err) != c.code || !strings.Contains(status.Convert(err).Message(), c.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, c.code, c.msg)
			}
			pt, err := api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: ct, Context: map[string]string{"a": "b"}})
			if err != nil || string(pt.GetPlaintext()) != "x" {
				t.Fatalf("keyring damaged: %v", err)
			}
		})
	}
	// The opaque message is the whole message: no hint of the cause.
	_, err = api.Decrypt(ctx, &v1.DecryptRequest{Ciphertext: tampered, Context: map[string]string{"a": "b"}})
	if got := status.Convert(err).Message(); got != "decryption failed" {
		t.Fatalf("auth failure message = %q", got)
	}
	if n := counterValue(t, e, `keyshift_request_errors_total{op="decrypt",reason="auth_failed"}`); n < 3 {
		t.Fatalf("auth_failed counter = %v, want >= 3", n)
	}
}

func TestHTTPJSONOverSocket(t *testing.T) {
	e := newEnv(t)
	hc := e.httpClient()
	post := e.postJSON
	pt := base64.StdEncoding.EncodeToString([]byte("hello over curl"))
	code, enc := post("/v1/encrypt", `{"plaintext":"`+pt+`","context":{"user":"7"}}`)
	if code != 200 || enc["version"] != float64(1) || enc["keyset"] != "payments" {
		t.Fatalf("encrypt = %d %v", code, enc)
	}
	code, dec := post("/v1/decrypt", `{"ciphertext":"`+enc["ciphertext"].(string)+`","context":{"user":"7"}}`)
	if code != 200 || dec["plaintext"] != pt {
		t.Fatalf("decrypt = %d %v", code, dec)
	}
	// The same ciphertext opens over gRPC: one API, two encodings.
	raw, _ := base64.StdEncoding.DecodeString(enc["ciphertext"].(string))
	if got, err := e.client.Decrypt(ctxT(t), raw, map[string]string{"user": "7"}); err != nil || string(got) != "hello over curl" {
		t.Fatalf("gRPC decrypt of HTTP ciphertext = %q, %v", got, err)
	}
	code, rw := post("/v1/rewrap", `{"ciphertext":"`+enc["ciphertext"].(string)+`","context":{"user":"7"}}`)
	if code != 200 || rw["fromVersion"] != float64(1) {
		t.Fatalf("rewrap = %d %v", code, rw)
	}
	code, b := post("/v1/batch/encrypt", `{"items":[{"plaintext":"`+pt+`"},{"keyset":"x"}]}`)
	if code != 200 || len(b["results"].([]any)) != 2 {
		t.Fatalf("batch = %d %v", code, b)
	}
	cases := []struct {
		path, body string
		code       int
		grpc, msg  string
	}{
		{"/v1/decrypt", `{"ciphertext":"AQID"}`, 400, "InvalidArgument", "malformed ciphertext"},
		{"/v1/decrypt", `{"ciphertext":"` + enc["ciphertext"].(string) + `"}`, 400, "InvalidArgument", "decryption failed"},
		{"/v1/decrypt", `{"ciphertext":`, 400, "InvalidArgument", "not valid JSON"},
		{"/v1/decrypt", `{"cipher":"x"}`, 400, "InvalidArgument", "unknown field"},
		{"/v1/encrypt", `{"keyset":"nope"}`, 404, "NotFound", "unknown keyset"},
		{"/v1/nothing", `{}`, 404, "NotFound", "no such endpoint"},
	}
	for _, c := range cases {
		code, m := post(c.path, c.body)
		if code != c.code || m["code"] != c.grpc || !strings.Contains(m["message"].(string), c.msg) {
			t.Errorf("%s %s = %d %v, want %d %s %q", c.path, c.body, code, m, c.code, c.grpc, c.msg)
		}
	}
	resp, err := hc.Get("http://keyshift/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(sb), `"ready":true`) || strings.Contains(string(sb), "wrapped") {
		t.Fatalf("status = %d %s", resp.StatusCode, sb)
	}
}

func TestPeerUIDAllowlist(t *testing.T) {
	me := uint32(os.Getuid())
	e := newEnv(t, withAllowed([]uint32{me + 4242}))
	_, err := e.client.Encrypt(ctxT(t), []byte("x"), nil)
	want := fmt.Sprintf("peer uid %d is not allowed", me)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), want) {
		t.Fatalf("gRPC err = %v, want PermissionDenied %q", err, want)
	}
	resp, err := e.httpClient().Post("http://keyshift/v1/encrypt", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), want) {
		t.Fatalf("HTTP = %d %s", resp.StatusCode, b)
	}
	if n := counterValue(t, e, `keyshift_peer_rejections_total{api="grpc"}`); n < 1 {
		t.Fatalf("grpc rejections = %v", n)
	}

	allowed := newEnv(t, withAllowed([]uint32{me}))
	if _, err := allowed.client.Encrypt(ctxT(t), []byte("x"), nil); err != nil {
		t.Fatalf("own uid refused: %v", err)
	}
}

// kubeSecretDir lays out a directory the way the kubelet does for a Secret
// volume: data in a timestamped directory, "..data" pointing at it, and
// each key a symlink through "..data".
type kubeSecretDir struct {
	t   *testing.T
	dir string
	gen int
}

func (k *kubeSecretDir) publish(ks *keyset.Keyset) {
	k.t.Helper()
	k.gen++
	ts := fmt.Sprintf("..2026_11_29_00_00_%02d.%d", k.gen, k.gen)
	if err := os.Mkdir(filepath.Join(k.dir, ts), 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := keyset.WriteFile(filepath.Join(k.dir, ts, "keyset.json"), ks); err != nil {
		k.t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(k.dir, "..data"))
	tmp := filepath.Join(k.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		k.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.dir, "..data")); err != nil {
		k.t.Fatal(err)
	}
	if k.gen == 1 {
		if err := os.Symlink("..data/keyset.json", filepath.Join(k.dir, "keyset.json")); err != nil {
			k.t.Fatal(err)
		}
	}
	if old != "" {
		os.RemoveAll(filepath.Join(k.dir, old))
	}
}

func TestHotSwapThroughKubernetesSymlinkSwap(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	ks := e.keyset("payments")
	// Restart the sidecar on a Secret-volume layout holding the same keyset.
	e.stop()
	vol := &kubeSecretDir{t: t, dir: filepath.Join(e.dir, "secret")}
	os.Mkdir(vol.dir, 0o755)
	vol.publish(ks)
	e.cfg.Keysets = map[string]string{"payments": filepath.Join(vol.dir, "keyset.json")}
	e.files["payments"] = filepath.Join(vol.dir, "keyset.json")
	e.start()
	e.waitReady()
	old, err := e.client.Encrypt(ctx, []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}
	next, err := addVersion(e, ks)
	if err != nil {
		t.Fatal(err)
	}
	vol.publish(next)
	e.waitFor(func(st KeysetStatus) bool { return hasVersion(st, 2, "pending") })
	// Pending: loaded to decrypt, not yet used to encrypt.
	if ct, _ := e.client.Encrypt(ctx, []byte("x"), nil); mustHeader(t, ct).Version != 1 {
		t.Fatal("encrypted with a pending version")
	}
	promoted, _ := next.Promote(2, time.Now())
	vol.publish(promoted)
	e.waitFor(func(st KeysetStatus) bool { return st.Primary == 2 })
	ct, err := e.client.Encrypt(ctx, []byte("after"), nil)
	if err != nil || mustHeader(t, ct).Version != 2 {
		t.Fatalf("after swap encrypt = %v", err)
	}
	for want, c := range map[string][]byte{"before": old, "after": ct} {
		if pt, err := e.client.Decrypt(ctx, c, nil); err != nil || string(pt) != want {
			t.Fatalf("decrypt %s = %q, %v", want, pt, err)
		}
	}
	if !strings.Contains(e.logs.String(), `"op":"CREATE"`) {
		t.Fatal("no directory event seen: the swap was picked up some other way")
	}
}

func mustHeader(t *testing.T, ct []byte) envelope.Header {
	t.Helper()
	h, _, err := envelope.Parse(ct)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// A corrupt, truncated, reused-version or stale document is refused; the
// running keyring keeps serving; the next good document loads.
func TestBadKeysetFileKeepsKeyring(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	path := e.files["payments"]
	good := e.keyset("payments")
	goodBytes, _ := good.Marshal()
	ct, err := e.client.Encrypt(ctx, []byte("keep me"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := addVersion(e, good)
	if err != nil {
		t.Fatal(err)
	}
	rotated, _ = rotated.Promote(2, time.Now())
	// Same number, different key: what a botched restore or a hand edit does.
	reused := rotated.Clone()
	other, _ := addVersion(e, good)
	reused.Versions[1].WrappedKey = other.Versions[1].WrappedKey
	reusedBytes, _ := json.Marshal(reused)
	rotatedBytes, _ := rotated.Marshal()
	dropped := rotated.Clone()
	dropped.Versions = dropped.Versions[1:]
	droppedBytes, _ := json.Marshal(dropped)
	renamed := good.Clone()
	renamed.Name = "orders"
	renamedBytes, _ := json.Marshal(renamed)
	// Key injection: keep every version and add a primary wrapped under
	// another KMS key (one the pod's KMS role may also use).
	kek2 := filepath.Join(e.dir, "kek2.json")
	foreign, err := rotation.Create(ctx, local.New(kek2), "payments", "local://"+kek2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if foreign, err = rotation.AddVersion(ctx, local.New(kek2), foreign, time.Now()); err != nil {
		t.Fatal(err)
	}
	injected := rotated.Clone()
	injected.KMS = foreign.KMS
	injected.Versions[1].WrappedKey = foreign.Versions[1].WrappedKey
	injectedBytes := mustMarshal(t, injected)
	// The same, claiming a migration: every version must then unwrap
	// under the new key to the key already held, and v1 cannot.
	claimed := injected.Clone()
	claimed.PreviousKMS = rotated.KMS
	claimedBytes := mustMarshal(t, claimed)
	// A version at the top of uint32 once loaded made every later
	// document look stale until the pod restarted.
	poisoned := rotated.Clone()
	top := poisoned.Versions[1]
	top.Version, top.State = 4294967295, keyset.StatePending
	poisoned.Versions = append(poisoned.Versions, top)
	poisonedBytes, _ := json.Marshal(poisoned)

	cases := []struct {
		name, content, wantErr, reason string
		setup                          func()
	}{
		{"garbage", "\x00\xffnot json", "invalid document", "invalid", nil},
		{"truncated", string(goodBytes[:len(goodBytes)/2]), "unexpected EOF", "invalid", nil},
		{"empty", "", "invalid document", "invalid", nil},
		{"wrong keyset name", string(renamedBytes), `configured as "payments"`, "invalid", nil},
		{"reused version number", string(reusedBytes), "never reused", "rejected", func() {
			// v2 must be known first for a reuse to be detectable.
			writeRaw(t, path, rotatedBytes)
			e.waitFor(func(st KeysetStatus) bool { return st.Primary == 2 })
		}},
		{"version deleted", string(droppedBytes), "disappeared", "rejected", nil},
		{"version 4294967295", string(poisonedBytes), "stop at", "invalid", nil},
		{"another KMS key", string(injectedBytes), "without a migration", "rejected", nil},
		{"migration the keys disprove", string(claimedBytes), "does not verify", "corrupt", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.setup != nil {
				c.setup()
			}
			series := fmt.Sprintf(`keyshift_keyring_reloads_total{keyset="payments",result=%q,source="file"}`, c.reason)
			before := counterValue(t, e, series)
			primary := e.srv.ring.load().sets["payments"].primary.Version()
			writeRaw(t, path, []byte(c.content))
			waitUntil(t, func() bool { return counterValue(t, e, series) > before }, "reload failure counted under "+c.reason)
			if got := e.srv.lastError("payments"); !strings.Contains(got, c.wantErr) {
				t.Fatalf("last error = %q, want it to contain %q", got, c.wantErr)
			}
			if got := e.srv.ring.load().sets["payments"].primary.Version(); got != primary {
				t.Fatalf("primary changed from v%d to v%d", primary, got)
			}
			if pt, err := e.client.Decrypt(ctx, ct, nil); err != nil || string(pt) != "keep me" {
				t.Fatalf("old data unreadable after a bad file: %v", err)
			}
			if _, err := e.client.Encrypt(ctx, []byte("x"), nil); err != nil {
				t.Fatalf("encrypt failed after a bad file: %v", err)
			}
		})
	}
	// An older copy (a Secret the kubelet has not synced while xDS already
	// delivered a newer document) is ignored, not an error.
	stale := `keyshift_keyring_reloads_total{keyset="payments",result="stale",source="file"}`
	writeRaw(t, path, goodBytes)
	waitUntil(t, func() bool { return counterValue(t, e, stale) >= 1 }, "stale copy counted")
	if got := e.srv.ring.load().sets["payments"].primary.Version(); got != 2 {
		t.Fatalf("a stale copy moved the primary to v%d", got)
	}
	// Retried on the next change: a good document loads again.
	third, err := addVersion(e, rotated)
	if err != nil {
		t.Fatal(err)
	}
	writeRaw(t, path, mustMarshal(t, third))
	e.waitFor(func(st KeysetStatus) bool { return hasVersion(st, 3, "pending") && st.LastError == "" })
}

func writeRaw(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func mustMarshal(t *testing.T, ks *keyset.Keyset) []byte {
	b, err := ks.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The KMS is away at startup: the sidecar serves (not ready, UNAVAILABLE),
// retries with backoff, and becomes ready when the KMS returns. Liveness
// stays OK throughout so the pod is not restarted.
func TestKMSDownAtStartup(t *testing.T) {
	e := newEnv(t, withoutWait())
	restoreKMS := e.restartWithoutKMS()
	ctx := ctxT(t)
	_, err := e.client.Encrypt(ctx, []byte("x"), nil)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "keyring not loaded") {
		t.Fatalf("encrypt before ready = %v", err)
	}
	// The ops port is on the pod network: it says what is not ready, not
	// why (the error names KMS paths and keys); the detail stays on the
	// socket (Status) and in the log.
	if code, body := httpGet(t, e.metricsURL()+"/readyz"); code != 503 || !strings.Contains(body, "keyset payments not loaded") || strings.Contains(body, "KEK") || strings.Contains(body, e.kekPath) {
		t.Fatalf("readyz = %d %q", code, body)
	}
	if code, _ := httpGet(t, e.metricsURL()+"/livez"); code != 200 {
		t.Fatalf("livez = %d during a KMS outage", code)
	}
	failures := `keyshift_keyring_reloads_total{keyset="payments",result="user_induced",source="file"}`
	waitUntil(t, func() bool { return counterValue(t, e, failures) >= 3 }, "three failed load attempts (retry with backoff)")
	restoreKMS()
	e.waitReady()
	if code, _ := httpGet(t, e.metricsURL()+"/readyz"); code != 200 {
		t.Fatalf("readyz after recovery = %d", code)
	}
	if _, err := e.client.Encrypt(ctx, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

// The KMS disappears while running: encrypt and decrypt go on from memory
// with zero failures, and a new document waits for the KMS.
func TestKMSOutageWhileRunning(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.hideKEK()
	for i := range 200 {
		ct, err := e.client.Encrypt(ctx, []byte{byte(i)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.client.Decrypt(ctx, ct, nil); err != nil {
			t.Fatal(err)
		}
	}
	if code, _ := httpGet(t, e.metricsURL()+"/readyz"); code != 200 {
		t.Fatalf("readyz = %d: an outage after load must not unready the pod", code)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// counterValue reads one series from /metrics as Prometheus exposes it.
func counterValue(t *testing.T, e *env, series string) float64 {
	t.Helper()
	return testbin.MetricValue(t, e.metricsURL()+"/metrics", series)
}

// Traffic keeps flowing through three rotations with zero failures; every
// ciphertext made at any point still decrypts at the end.
func TestRotationUnderLoadNoFailures(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	var stop atomic.Bool
	var ops, fails atomic.Int64
	var mu sync.Mutex
	type item struct {
		ct []byte
		c  map[string]string
	}
	var saved []item
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := map[string]string{"worker": fmt.Sprint(w)}
			for i := 0; !stop.Load(); i++ {
				ct, err := e.client.Encrypt(ctx, []byte("payload"), c)
				if err == nil {
					_, err = e.client.Decrypt(ctx, ct, c)
				}
				ops.Add(1)
				if err != nil {
					fails.Add(1)
					t.Errorf("request failed during rotation: %v", err)
					return
				}
				if i%50 == 0 {
					mu.Lock()
					saved = append(saved, item{ct, c})
					mu.Unlock()
				}
			}
		}()
	}
	for range 3 {
		time.Sleep(50 * time.Millisecond)
		e.rotate("payments")
	}
	time.Sleep(50 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	versions := map[uint32]bool{}
	for _, it := range saved {
		versions[mustHeader(t, it.ct).Version] = true
		if _, err := e.client.Decrypt(ctx, it.ct, it.c); err != nil {
			t.Fatalf("a ciphertext made during rotation does not decrypt: %v", err)
		}
	}
	if fails.Load() != 0 || ops.Load() < 100 {
		t.Fatalf("ops %d, failures %d", ops.Load(), fails.Load())
	}
	if len(versions) < 2 {
		t.Fatalf("traffic saw versions %v, want several", versions)
	}
}

func addVersion(e *env, ks *keyset.Keyset) (*keyset.Keyset, error) {
	return rotation.AddVersion(context.Background(), e.kms, ks, time.Now())
}

func waitUntil(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// No plaintext, data key, wrapped key or KEK reaches the logs: canaries are
// pushed through every path (success, failures, reloads, bad files) at
// debug level, then searched for in every common encoding.
func TestNoSecretsInLogs(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	canary := []byte("CANARY-plaintext-7f3a9c")
	ctxCanary := map[string]string{"tenant": "CANARY-context-value"}
	ct, err := e.client.Encrypt(ctx, canary, ctxCanary)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Decrypt(ctx, ct, ctxCanary); err != nil {
		t.Fatal(err)
	}
	_, _ = e.client.Decrypt(ctx, ct, map[string]string{"tenant": "wrong"})
	_, _ = e.client.Decrypt(ctx, ct[:len(ct)-3], nil)
	_, _ = e.client.API().Encrypt(ctx, &v1.EncryptRequest{Keyset: "nope", Plaintext: canary})
	_, _ = e.httpClient().Post("http://keyshift/v1/encrypt", "application/json",
		strings.NewReader(`{"plaintext":"`+base64.StdEncoding.EncodeToString(canary)+`", "bogus": 1}`))
	e.rotate("payments")
	ks := e.keyset("payments")
	writeRaw(t, e.files["payments"], []byte(`{"name":"payments","kms":"local:///x","versions":[{"version":1,"state":"primary","wrappedKey":"Q0FOQVJZ"}]}`))
	waitUntil(t, func() bool { return strings.Contains(e.srv.lastError("payments"), "invalid") }, "bad file noticed")
	e.stop()

	logs := e.logs.String()
	if !strings.Contains(logs, "keyring swapped") || !strings.Contains(logs, "keyset load failed") {
		t.Fatalf("logs lack the expected events; the test would prove nothing:\n%s", logs)
	}
	secrets := map[string][]byte{"plaintext": canary, "context value": []byte("CANARY-context-value")}
	for _, v := range ks.Versions {
		secrets[fmt.Sprintf("wrapped v%d", v.Version)] = v.WrappedKey
		dek, err := e.kms.Unwrap(ctx, kmsWrapped(v), keyset.WrapAAD("payments", v.Version))
		if err != nil {
			t.Fatal(err)
		}
		secrets[fmt.Sprintf("DEK v%d", v.Version)] = dek
	}
	kek, _ := os.ReadFile(e.kekPath)
	var kf struct{ Versions []struct{ Key []byte } }
	if err := json.Unmarshal(kek, &kf); err != nil || len(kf.Versions) == 0 {
		t.Fatalf("KEK file: %v", err)
	}
	secrets["KEK"] = kf.Versions[0].Key
	for name, s := range secrets {
		for enc, form := range testbin.Encodings(s) {
			if strings.Contains(logs, form) {
				t.Errorf("%s leaked into logs as %s", name, enc)
			}
		}
	}
}

func TestSignVerifyAcrossRotation(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	svc := e.srv.Service()
	v, mac, err := svc.Sign(ctx, "payments", []byte("GET /orders"))
	if err != nil || v != 1 {
		t.Fatalf("Sign = v%d, %v", v, err)
	}
	e.rotate("payments")
	if err := svc.Verify(ctx, "payments", v, []byte("GET /orders"), mac); err != nil {
		t.Fatalf("MAC from before the rotation: %v", err)
	}
	if err := svc.Verify(ctx, "payments", v, []byte("GET /admin"), mac); !errors.Is(err, cryptoapi.ErrBadMAC) {
		t.Fatalf("MAC over other data: %v", err)
	}
	if err := svc.Verify(ctx, "payments", 7, []byte("GET /orders"), mac); !errors.Is(err, cryptoapi.ErrUnknownKeyVersion) {
		t.Fatalf("unknown version: %v", err)
	}
	if v2, _, _ := svc.Sign(ctx, "payments", nil); v2 != 2 {
		t.Fatalf("signs with v%d after rotation", v2)
	}
}

// The KMS poller notices a KEK rotation in the KMS and makes the sidecar
// reread its keyset at once (resync is an hour away and no file changed).
func TestKMSPollerRereadsOnKEKChange(t *testing.T) {
	e := newEnv(t, func(e *env) { e.cfg.KMSPoll = 20 * time.Millisecond })
	unchanged := `keyshift_keyring_reloads_total{keyset="payments",result="unchanged",source="file"}`
	waitUntil(t, func() bool { return counterValue(t, e, `keyshift_kms_polls_total{keyset="payments",result="ok"}`) >= 2 }, "KMS polled")
	if n := counterValue(t, e, unchanged); n != 0 {
		t.Fatalf("rereads before any KEK change: %v", n)
	}
	if _, err := e.kms.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return counterValue(t, e, unchanged) >= 1 }, "reread after the KEK changed")
	if !strings.Contains(e.logs.String(), "KEK version changed in the KMS") {
		t.Fatal("the change was not logged")
	}
}

// The one way to another KMS key: every version re-wrapped under it with
// previousKms recorded (keyshift keyset migrate-kms). The sidecar unwraps
// each version under the new key, finds the keys it holds, and swaps.
func TestKMSMigrationLoads(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	ct, err := e.client.Encrypt(ctx, []byte("before the migration"), nil)
	if err != nil {
		t.Fatal(err)
	}
	kek2 := filepath.Join(e.dir, "kek2.json")
	migrated, err := rotation.MigrateKMS(ctx, e.kms, local.New(kek2), e.keyset("payments"), "local://"+kek2)
	if err != nil {
		t.Fatal(err)
	}
	ok := `keyshift_keyring_reloads_total{keyset="payments",result="ok",source="file"}`
	before := counterValue(t, e, ok)
	e.write("payments", migrated)
	waitUntil(t, func() bool { return counterValue(t, e, ok) > before }, "the migrated document loaded")
	if got := e.srv.ring.load().sets["payments"].doc.KMS; got != "local://"+kek2 {
		t.Fatalf("serving under %s, want the new KMS key", got)
	}
	if pt, err := e.client.Decrypt(ctx, ct, nil); err != nil || string(pt) != "before the migration" {
		t.Fatalf("old data after the migration: %q, %v", pt, err)
	}
}

// The key of a version that leaves the keyring is wiped from memory once
// the grace for in-flight calls has passed; the others are untouched.
func TestDroppedVersionKeyWiped(t *testing.T) {
	e := newEnv(t, func(e *env) { e.cfg.DroppedKeyGrace = 50 * time.Millisecond })
	ks := e.keyset("payments")
	next, err := addVersion(e, ks)
	if err != nil {
		t.Fatal(err)
	}
	next, _ = next.Promote(2, time.Now())
	e.write("payments", next)
	e.waitFor(func(st KeysetStatus) bool { return st.Primary == 2 })
	v1 := e.srv.ring.load().sets["payments"].keys[1]
	retired, err := next.Retire(1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e.write("payments", retired)
	e.waitFor(func(st KeysetStatus) bool { return hasVersion(st, 1, "disabled") })
	waitUntil(t, v1.Wiped, "v1's key wiped after the grace")
	if e.srv.ring.load().sets["payments"].keys[2].Wiped() {
		t.Fatal("the primary's key was wiped")
	}
	if _, err := e.client.Encrypt(ctxT(t), []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}
