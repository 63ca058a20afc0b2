package extauthz

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/internal/testbin"
)

// testPolicy exercises every rule kind. "payments" holds data keys,
// "webhooks" MAC keys.
const testPolicy = `{
  "default": "deny",
  "routes": [
    {"prefix": "/healthz", "allow": true},
    {"prefix": "/admin/", "deny": true},
    {"prefix": "/app/", "decrypt": [{
      "keyset": "payments", "cookie": "session", "to_header": "x-user",
      "context": {"purpose": "session"},
      "reseal": {"cookie": {"max_age_seconds": 3600}}
    }]},
    {"prefix": "/api/", "decrypt": [{
      "keyset": "payments", "header": "x-token", "to_header": "x-token-plain", "to_encoding": "base64url",
      "reseal": {"header": "x-token-resealed"}
    }]},
    {"prefix": "/public/", "decrypt": [{
      "keyset": "payments", "cookie": "session", "to_header": "x-user", "context": {"purpose": "session"}, "optional": true
    }]},
    {"prefix": "/hooks/", "verify": {
      "keyset": "webhooks", "header": "x-keyshift-signature", "parts": ["method", "path", "query", "header:x-request-id"]
    }},
    {"prefix": "/internal/",
      "decrypt": [{"keyset": "payments", "cookie": "session", "to_header": "x-user", "context": {"purpose": "session"}}],
      "sign": {"keyset": "webhooks", "header": "x-keyshift-proxy-mac", "parts": ["method", "path", "header:x-user"]}
    }
  ]
}`

// sessionCtx is what the app seals the /app/ session cookie with: the
// rule's context plus the reserved ext_authz purpose.
var sessionCtx = tokenCtx(map[string]string{"purpose": "session"})

// testStripped is every upstream header a rule of testPolicy can write,
// sorted: an allowed request loses each one its decision does not set.
var testStripped = []string{"x-keyshift-nonce", "x-keyshift-proxy-mac", "x-keyshift-timestamp", "x-token-plain", "x-user"}

// stripped is testStripped without the names a decision sets itself.
func stripped(set ...string) []string {
	var out []string
	for _, h := range testStripped {
		if !slices.Contains(set, h) {
			out = append(out, h)
		}
	}
	return out
}

// authzEnv is a real sidecar with the ext_authz service on a loopback TCP
// port and a Unix socket, and a real ext_authz gRPC client on each.
type authzEnv struct {
	*env
	addr, socket string
	tcp, unix    authv3.AuthorizationClient
	conns        []*grpc.ClientConn
}

func newAuthzEnv(t testing.TB, policy string, mods ...func(*Config)) *authzEnv {
	t.Helper()
	e := newEnv(t, "payments", "webhooks")
	a := &authzEnv{env: e}
	a.start(t, policy, mods...)
	return a
}

func (a *authzEnv) start(t testing.TB, policy string, mods ...func(*Config)) {
	t.Helper()
	p, err := ParsePolicy([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: "127.0.0.1:0", Socket: filepath.Join(a.dir, fmt.Sprintf("authz%d.sock", len(a.conns))), Policy: p}
	for _, m := range mods {
		m(&cfg)
	}
	az, err := Start(context.Background(), a.authzConfig(cfg), a.srv.Service())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(az.Stop)
	a.addr, a.socket = az.Addr(), cfg.Socket
	a.tcp = authv3.NewAuthorizationClient(a.dial(t, a.addr))
	a.unix = authv3.NewAuthorizationClient(a.dial(t, "unix://"+cfg.Socket))
}

func (a *authzEnv) dial(t testing.TB, target string) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a.conns = append(a.conns, c)
	return c
}

// seal makes a cookie or header value the way the application would:
// Encrypt on the socket API, then unpadded base64url.
func (a *authzEnv) seal(t testing.TB, keyset, plaintext string, c map[string]string) string {
	t.Helper()
	s, err := a.srv.Service().Encrypt(context.Background(), keyset, []byte(plaintext), c)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(s.Ciphertext)
}

// envoyRequest is a CheckRequest shaped as Envoy's HTTP ext_authz filter
// sends it over HTTP/2: lowercase header names, the pseudo-headers among
// them, every cookie in one "cookie" header, the query string in path.
func envoyRequest(method, path string, headers map[string]string) *authv3.CheckRequest {
	h := map[string]string{
		":method": method, ":path": path, ":authority": "shop.example.com", ":scheme": "https",
		"user-agent": "Mozilla/5.0", "accept": "*/*", "x-forwarded-proto": "https",
		"x-request-id": "6c1f8e0e-4a1b-4f9e-9a57-0d4c1f7e2b11", "x-envoy-internal": "true",
	}
	for k, v := range headers {
		h[k] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "10.244.1.17", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 51712}}}}},
		Destination: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "10.244.1.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: "9164793722443311513", Method: method, Headers: h, Path: path, Host: "shop.example.com",
				Scheme: "https", Protocol: "HTTP/2",
			},
		},
	}}
}

// checkResult is a CheckResponse flattened for comparison.
type checkResult struct {
	Code     codes.Code
	Status   int               // HTTP status of a denial
	Denied   string            // x-keyshift-denied
	Body     string            // denial body
	Set      map[string]string // upstream headers set (all OVERWRITE)
	Remove   []string          // upstream headers removed
	Response []string          // "name: value" added to the downstream response
}

// hasDeprecatedAppend reports whether the deprecated "append" field is set.
// It must not be: Envoy then prefers it over append_action, and append=true
// folds several Set-Cookie values into one comma-joined header.
func hasDeprecatedAppend(h *corev3.HeaderValueOption) bool {
	m := h.ProtoReflect()
	return m.Has(m.Descriptor().Fields().ByName("append"))
}

func flatten(t testing.TB, resp *authv3.CheckResponse) checkResult {
	t.Helper()
	r := checkResult{Code: codes.Code(resp.GetStatus().GetCode())}
	if ok := resp.GetOkResponse(); ok != nil {
		for _, h := range ok.GetHeaders() {
			if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD || hasDeprecatedAppend(h) {
				t.Errorf("upstream header %s: action %v (deprecated append set: %v), want OVERWRITE_IF_EXISTS_OR_ADD only",
					h.GetHeader().GetKey(), h.GetAppendAction(), hasDeprecatedAppend(h))
			}
			if r.Set == nil {
				r.Set = map[string]string{}
			}
			r.Set[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		r.Remove = ok.GetHeadersToRemove()
		for _, h := range ok.GetResponseHeadersToAdd() {
			if h.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD || hasDeprecatedAppend(h) {
				t.Errorf("response header %s must be added as its own entry", h.GetHeader().GetKey())
			}
			r.Response = append(r.Response, h.GetHeader().GetKey()+": "+h.GetHeader().GetValue())
		}
	}
	if d := resp.GetDeniedResponse(); d != nil {
		r.Status, r.Body = int(d.GetStatus().GetCode()), d.GetBody()
		for _, h := range d.GetHeaders() {
			if h.GetHeader().GetKey() == denyHeader {
				r.Denied = h.GetHeader().GetValue()
			}
		}
	}
	return r
}

func (a *authzEnv) check(t testing.TB, c authv3.AuthorizationClient, req *authv3.CheckRequest) checkResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, req)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return flatten(t, resp)
}

func denied(status int, reason string) checkResult {
	code := codes.PermissionDenied
	if status == 503 {
		code = codes.Unavailable
	} else if status >= 500 {
		code = codes.Internal
	}
	return checkResult{Code: code, Status: status, Denied: reason, Body: "keyshift: request denied (" + reason + ")\n"}
}

// openResealed checks a resealed value: it decrypts to plaintext under
// version want of payments with context c.
func (a *authzEnv) openResealed(t testing.TB, value, plaintext string, c map[string]string, want uint32) {
	t.Helper()
	ct, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil {
		t.Fatalf("resealed value is not unpadded base64url: %v", err)
	}
	o, err := a.srv.Service().Decrypt(context.Background(), ct, c)
	if err != nil || string(o.Plaintext) != plaintext || o.Version != want || o.Keyset != "payments" {
		t.Fatalf("resealed value opens to %q under %s v%d, %v; want %q under payments v%d", o.Plaintext, o.Keyset, o.Version, err, plaintext, want)
	}
}

// The core scenario, over both transports: a cookie sealed before a
// rotation is accepted after it and comes back resealed under the new
// primary; the resealed cookie is then accepted without another reseal.
func TestExtAuthzDecryptCookieAcrossRotation(t *testing.T) {
	a := newAuthzEnv(t, testPolicy)
	const user = "alice@example.com|role=buyer"
	oldCookie := a.seal(t, "payments", user, sessionCtx)
	cookieHeader := func(v string) string { return "theme=dark; session=" + v + "; _ga=GA1.2.3" }
	want := checkResult{Code: codes.OK, Set: map[string]string{"x-user": user, "cookie": "theme=dark; _ga=GA1.2.3"}, Remove: stripped("x-user")}
	transports := map[string]authv3.AuthorizationClient{"tcp": a.tcp, "unix": a.unix}
	for name, c := range transports {
		got := a.check(t, c, envoyRequest("GET", "/app/cart?item=42", map[string]string{"cookie": cookieHeader(oldCookie)}))
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s, before rotation (-want +got):\n%s", name, diff)
		}
	}

	if v := a.rotate("payments"); v != 2 {
		t.Fatalf("rotated to v%d", v)
	}
	var resealed string
	for name, c := range transports {
		got := a.check(t, c, envoyRequest("GET", "/app/cart?item=42", map[string]string{"cookie": cookieHeader(oldCookie)}))
		if len(got.Response) != 1 {
			t.Fatalf("%s: response headers %q, want one Set-Cookie", name, got.Response)
		}
		sc, err := http.ParseSetCookie(strings.TrimPrefix(got.Response[0], "set-cookie: "))
		if err != nil {
			t.Fatal(err)
		}
		a.openResealed(t, sc.Value, user, sessionCtx, 2)
		resealed = sc.Value
		gotCookie := []string{sc.Name, sc.Path, fmt.Sprint(sc.MaxAge), fmt.Sprint(sc.Secure), fmt.Sprint(sc.HttpOnly), fmt.Sprint(sc.SameSite)}
		if diff := cmp.Diff([]string{"session", "/", "3600", "true", "true", fmt.Sprint(http.SameSiteLaxMode)}, gotCookie); diff != "" {
			t.Errorf("%s: Set-Cookie attributes (-want +got):\n%s", name, diff)
		}
		got.Response = nil
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s, after rotation (-want +got):\n%s", name, diff)
		}
	}
	if n := counterValue(t, a.env, `keyshift_extauthz_reseals_total{result="ok",route="/app/"}`); n != 2 {
		t.Errorf("reseals counted %v, want 2", n)
	}
	got := a.check(t, a.unix, envoyRequest("GET", "/app/cart", map[string]string{"cookie": cookieHeader(resealed)}))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("resealed cookie (-want +got):\n%s", diff)
	}
}

// A header-borne token: binary plaintext goes upstream as base64url, the
// original header is removed, and a token from before a rotation comes back
// resealed in a response header.
func TestExtAuthzDecryptHeaderAcrossRotation(t *testing.T) {
	a := newAuthzEnv(t, testPolicy)
	secret := "\x00\x01binary\xff"
	token := a.seal(t, "payments", secret, tokenCtx(nil))
	want := checkResult{Code: codes.OK, Set: map[string]string{"x-token-plain": base64.RawURLEncoding.EncodeToString([]byte(secret))},
		Remove: append([]string{"x-token"}, stripped("x-token-plain")...)}
	// A client-sent x-token-plain is overwritten, never trusted.
	req := envoyRequest("POST", "/api/orders", map[string]string{"x-token": token, "x-token-plain": "forged"})
	if diff := cmp.Diff(want, a.check(t, a.tcp, req)); diff != "" {
		t.Errorf("before rotation (-want +got):\n%s", diff)
	}
	// Padded base64url is tolerated.
	padded := envoyRequest("POST", "/api/orders", map[string]string{"x-token": base64.URLEncoding.EncodeToString(mustDecode(t, token))})
	if diff := cmp.Diff(want, a.check(t, a.tcp, padded)); diff != "" {
		t.Errorf("padded (-want +got):\n%s", diff)
	}
	a.rotate("payments")
	got := a.check(t, a.unix, req)
	if len(got.Response) != 1 || !strings.HasPrefix(got.Response[0], "x-token-resealed: ") {
		t.Fatalf("response headers %q, want x-token-resealed", got.Response)
	}
	a.openResealed(t, strings.TrimPrefix(got.Response[0], "x-token-resealed: "), secret, tokenCtx(nil), 2)
	got.Response = nil
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after rotation (-want +got):\n%s", diff)
	}
}

func mustDecode(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every way a request can fail, with its status, reason header, body and
// counter.
func TestExtAuthzDenials(t *testing.T) {
	a := newAuthzEnv(t, testPolicy)
	good := a.seal(t, "payments", "alice", sessionCtx)
	ct := mustDecode(t, good)
	tampered := slices.Clone(ct)
	tampered[len(tampered)-1] ^= 1
	v99 := slices.Clone(ct)
	binary.BigEndian.PutUint32(v99[2+len("payments"):], 99)
	b64 := base64.RawURLEncoding.EncodeToString
	cookie := func(v string) map[string]string { return map[string]string{"cookie": "theme=dark; session=" + v} }

	tests := []struct {
		name    string
		method  string
		path    string
		headers map[string]string
		want    checkResult
		route   string
	}{
		{"cookie missing", "GET", "/app/cart", map[string]string{"cookie": "theme=dark"}, denied(401, "missing_ciphertext"), "/app/"},
		{"no cookie header", "GET", "/app/cart", nil, denied(401, "missing_ciphertext"), "/app/"},
		{"tampered", "GET", "/app/cart", cookie(b64(tampered)), denied(401, "auth_failed"), "/app/"},
		{"truncated", "GET", "/app/cart", cookie(b64(ct[:30])), denied(401, "malformed"), "/app/"},
		{"not base64url", "GET", "/app/cart", cookie("a+b/c"), denied(401, "bad_encoding"), "/app/"},
		{"unknown version", "GET", "/app/cart", cookie(b64(v99)), denied(401, "unknown_version"), "/app/"},
		{"other keyset", "GET", "/app/cart", cookie(a.seal(t, "webhooks", "alice", sessionCtx)), denied(401, "wrong_keyset"), "/app/"},
		{"other context", "GET", "/app/cart", cookie(a.seal(t, "payments", "alice", tokenCtx(map[string]string{"purpose": "csrf"}))), denied(401, "auth_failed"), "/app/"},
		{"no purpose", "GET", "/app/cart", cookie(a.seal(t, "payments", "alice", map[string]string{"purpose": "session"})), denied(401, "auth_failed"), "/app/"},
		{"context-free token", "POST", "/api/orders", map[string]string{"x-token": a.seal(t, "payments", "alice", nil)}, denied(401, "auth_failed"), "/api/"},
		{"raw plaintext not header-safe", "GET", "/app/cart", cookie(a.seal(t, "payments", "alice\r\nx-admin: 1", sessionCtx)), denied(500, "bad_plaintext"), "/app/"},
		{"header token missing", "POST", "/api/orders", nil, denied(401, "missing_ciphertext"), "/api/"},
		{"no route, default deny", "GET", "/other", nil, denied(403, "no_route"), "default"},
		{"route deny", "GET", "/admin/users?id=1", nil, denied(403, "route_denied"), "/admin/"},
		{"undecodable path", "GET", "/app/%zz", nil, denied(400, "bad_path"), "default"},
		{"dot segments do not escape a rule", "GET", "/healthz/../app/cart", nil, denied(401, "missing_ciphertext"), "/app/"},
		{"percent-encoding does not escape a rule", "GET", "/%61pp/cart", nil, denied(401, "missing_ciphertext"), "/app/"},
		{"double slash does not escape a rule", "GET", "//app/cart", nil, denied(401, "missing_ciphertext"), "/app/"},
		{"optional cookie present but bad", "GET", "/public/x", cookie(b64(tampered)), denied(401, "auth_failed"), "/public/"},
		{"signature missing", "POST", "/hooks/pay", nil, denied(401, "missing_signature"), "/hooks/"},
		{"signature malformed", "POST", "/hooks/pay", map[string]string{"x-keyshift-signature": "v1:abc"}, denied(401, "bad_signature"), "/hooks/"},
		{"signature version zero", "POST", "/hooks/pay", map[string]string{"x-keyshift-signature": "v0.AAAA"}, denied(401, "bad_signature"), "/hooks/"},
		{"signature without timestamp", "POST", "/hooks/pay", map[string]string{"x-keyshift-signature": "v1.AAAA"}, denied(401, "missing_timestamp"), "/hooks/"},
		{"path parameter", "GET", "/healthz/..;/admin/", map[string]string{"x-user": "alice"}, denied(400, "bad_path"), "default"},
		{"backslash", "GET", `/healthz\..\admin\`, nil, denied(400, "bad_path"), "default"},
		{"double encoding", "GET", "/healthz/%252e%252e/admin/", nil, denied(400, "bad_path"), "default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			series := fmt.Sprintf(`keyshift_extauthz_denials_total{reason=%q,route=%q}`, tc.want.Denied, tc.route)
			before := counterValue(t, a.env, series)
			got := a.check(t, a.unix, envoyRequest(tc.method, tc.path, tc.headers))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if after := counterValue(t, a.env, series); after != before+1 {
				t.Errorf("%s went %v -> %v, want +1", series, before, after)
			}
		})
	}

	// Allowed routes, for contrast: explicit allow, and an optional cookie
	// that is absent (a forged x-user is removed, not passed on).
	if diff := cmp.Diff(checkResult{Code: codes.OK, Remove: testStripped}, a.check(t, a.tcp, envoyRequest("GET", "/healthz", nil))); diff != "" {
		t.Errorf("allow route (-want +got):\n%s", diff)
	}
	got := a.check(t, a.tcp, envoyRequest("GET", "/public/x", map[string]string{"x-user": "admin"}))
	if diff := cmp.Diff(checkResult{Code: codes.OK, Remove: append([]string{"x-user"}, stripped("x-user")...)}, got); diff != "" {
		t.Errorf("optional cookie absent (-want +got):\n%s", diff)
	}

	// A token under a version revoked after a rotation is refused (a
	// forged one must not get through, and it is not resealed); once the
	// revoked version is disabled it no longer opens at all.
	a.rotate("payments")
	a.revoke("payments", 1)
	revokedSeries := `keyshift_extauthz_denials_total{reason="revoked",route="/app/"}`
	before := counterValue(t, a.env, revokedSeries)
	if diff := cmp.Diff(denied(401, "revoked"), a.check(t, a.tcp, envoyRequest("GET", "/app/cart", cookie(good)))); diff != "" {
		t.Errorf("revoked version (-want +got):\n%s", diff)
	}
	if after := counterValue(t, a.env, revokedSeries); after != before+1 {
		t.Errorf("%s went %v -> %v, want +1", revokedSeries, before, after)
	}
	ks, err := a.keyset("payments").Retire(1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a.write("payments", ks)
	a.waitFor(func(st sidecar.KeysetStatus) bool { return st.Name == "payments" && hasVersion(st, 1, "disabled") })
	if diff := cmp.Diff(denied(401, "unknown_version"), a.check(t, a.tcp, envoyRequest("GET", "/app/cart", cookie(good)))); diff != "" {
		t.Errorf("disabled version (-want +got):\n%s", diff)
	}
}

// Request MACs: the documented canonical bytes verify, any changed part
// does not, and a MAC made before a rotation still verifies after it. A
// sign rule MACs the request as the upstream receives it (after decrypt).
func TestExtAuthzSignVerify(t *testing.T) {
	a := newAuthzEnv(t, testPolicy)
	svc := a.srv.Service()
	ctx := ctxT(t)
	const rid = "6c1f8e0e-4a1b-4f9e-9a57-0d4c1f7e2b11" // envoyRequest's x-request-id
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	// The bytes a client signs, written out as the policy doc describes them.
	canonical := "keyshift-request-mac-v2/sender\ntimestamp=" + ts + "\nnonce=\nmethod=POST\npath=/hooks/pay\nquery=id=7&amount=10\nheader:x-request-id=" + rid
	v, mac, err := svc.Sign(ctx, "webhooks", []byte(canonical))
	if err != nil || v != 1 {
		t.Fatalf("Sign = v%d, %v", v, err)
	}
	sig := "v1." + base64.RawURLEncoding.EncodeToString(mac)
	hook := func(method, path string, sig string) *authv3.CheckRequest {
		return envoyRequest(method, path, map[string]string{"x-keyshift-signature": sig, "x-keyshift-timestamp": ts, "content-type": "application/json"})
	}
	ok := checkResult{Code: codes.OK, Remove: testStripped}
	tests := []struct {
		name string
		req  *authv3.CheckRequest
		want checkResult
	}{
		{"valid", hook("POST", "/hooks/pay?id=7&amount=10", sig), ok},
		{"tampered path", hook("POST", "/hooks/refund?id=7&amount=10", sig), denied(401, "bad_mac")},
		{"tampered query", hook("POST", "/hooks/pay?id=7&amount=1000", sig), denied(401, "bad_mac")},
		{"tampered method", hook("PUT", "/hooks/pay?id=7&amount=10", sig), denied(401, "bad_mac")},
		{"other request id", envoyRequest("POST", "/hooks/pay?id=7&amount=10", map[string]string{"x-keyshift-signature": sig, "x-keyshift-timestamp": ts, "x-request-id": "replayed"}), denied(401, "bad_mac")},
		{"unloaded version", hook("POST", "/hooks/pay?id=7&amount=10", "v9."+base64.RawURLEncoding.EncodeToString(mac)), denied(401, "unknown_version")},
		{"truncated MAC", hook("POST", "/hooks/pay?id=7&amount=10", sig[:23]), denied(401, "bad_mac")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, a.check(t, a.tcp, tc.req)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}

	a.rotate("webhooks")
	if diff := cmp.Diff(ok, a.check(t, a.unix, hook("POST", "/hooks/pay?id=7&amount=10", sig))); diff != "" {
		t.Errorf("MAC from before the rotation (-want +got):\n%s", diff)
	}
	v2, mac2, err := svc.Sign(ctx, "webhooks", []byte(canonical))
	if err != nil || v2 != 2 {
		t.Fatalf("Sign after rotation = v%d, %v", v2, err)
	}
	if diff := cmp.Diff(ok, a.check(t, a.unix, hook("POST", "/hooks/pay?id=7&amount=10", formatMAC(v2, mac2)))); diff != "" {
		t.Errorf("MAC from after the rotation (-want +got):\n%s", diff)
	}

	// sign: the upstream gets x-user and a MAC over method, path and x-user.
	session := a.seal(t, "payments", "bob", sessionCtx)
	got := a.check(t, a.tcp, envoyRequest("DELETE", "/internal/jobs/7?force=1", map[string]string{"cookie": "session=" + session}))
	upMAC, upTS, upNonce := got.Set["x-keyshift-proxy-mac"], got.Set["x-keyshift-timestamp"], got.Set["x-keyshift-nonce"]
	want := checkResult{Code: codes.OK, Set: map[string]string{"x-user": "bob", "x-keyshift-proxy-mac": upMAC, "x-keyshift-timestamp": upTS, "x-keyshift-nonce": upNonce},
		Remove: []string{"cookie", "x-token-plain"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sign route (-want +got):\n%s", diff)
	}
	ver, m, okMAC := parseMAC(upMAC)
	if !okMAC || ver != 2 {
		t.Fatalf("upstream MAC %q: version %d, ok %v; want v2", upMAC, ver, okMAC)
	}
	proxyBytes := "keyshift-request-mac-v2/proxy\ntimestamp=" + upTS + "\nnonce=" + upNonce + "\nmethod=DELETE\npath=/internal/jobs/7\nheader:x-user=bob"
	if err := svc.Verify(ctx, "webhooks", ver, []byte(proxyBytes), m); err != nil {
		t.Errorf("the upstream cannot verify the proxy's MAC: %v", err)
	}
}

// Nothing secret reaches the logs, even at debug level: not the plaintext,
// not the cookie or token values, not the resealed values, not a MAC.
func TestExtAuthzNoSecretsInLogs(t *testing.T) {
	a := newAuthzEnv(t, testPolicy)
	const canary = "CANARY-plaintext-41b7"
	session := a.seal(t, "payments", canary, sessionCtx)
	token := a.seal(t, "payments", canary+"-token", tokenCtx(nil))
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	const nonce = "bm9uY2Utbm9uY2Utbm9uY2U"
	_, mac, err := a.srv.Service().Sign(ctxT(t), "webhooks", []byte("keyshift-request-mac-v2/sender\ntimestamp="+ts+"\nnonce="+nonce+
		"\nmethod=GET\npath=/hooks/x\nquery=\nheader:x-request-id=6c1f8e0e-4a1b-4f9e-9a57-0d4c1f7e2b11"))
	if err != nil {
		t.Fatal(err)
	}
	sig := formatMAC(1, mac)
	tampered := mustDecode(t, session)
	tampered[len(tampered)-1] ^= 1
	secrets := map[string]string{"plaintext": canary, "session cookie": session, "token": token, "mac": sig}
	run := func() checkResult {
		for _, r := range []*authv3.CheckRequest{
			envoyRequest("GET", "/app/x", map[string]string{"cookie": "session=" + session}),
			envoyRequest("GET", "/app/x", map[string]string{"cookie": "session=" + base64.RawURLEncoding.EncodeToString(tampered)}),
			envoyRequest("GET", "/app/x", map[string]string{"cookie": "session=" + a.seal(t, "payments", canary+"\n", sessionCtx)}),
			envoyRequest("GET", "/api/x", map[string]string{"x-token": token}),
			envoyRequest("GET", "/hooks/x", map[string]string{"x-keyshift-signature": sig, "x-keyshift-timestamp": ts, "x-keyshift-nonce": nonce}),
			envoyRequest("GET", "/hooks/y", map[string]string{"x-keyshift-signature": sig, "x-keyshift-timestamp": ts, "x-keyshift-nonce": nonce}),
			envoyRequest("GET", "/internal/x", map[string]string{"cookie": "session=" + session}),
		} {
			a.check(t, a.unix, r)
		}
		return a.check(t, a.tcp, envoyRequest("GET", "/app/x", map[string]string{"cookie": "session=" + session}))
	}
	run()
	a.rotate("payments")
	after := run()
	if len(after.Response) != 1 {
		t.Fatalf("expected a reseal after rotation, got %+v", after)
	}
	secrets["resealed cookie"] = strings.TrimPrefix(strings.SplitN(after.Response[0], ";", 2)[0], "set-cookie: session=")
	a.stop()

	logs := a.logs.String()
	for _, must := range []string{`"msg":"ext_authz listening"`, `"msg":"ext_authz check"`, `"reason":"auth_failed"`, `"reason":"bad_mac"`,
		`"msg":"ext_authz check failed on the sidecar side"`, `"resealed":1`, `"set":["x-user","x-keyshift-timestamp","x-keyshift-nonce","x-keyshift-proxy-mac"]`} {
		if !strings.Contains(logs, must) {
			t.Fatalf("logs lack %s; the test would prove nothing:\n%s", must, logs)
		}
	}
	for name, s := range secrets {
		for enc, form := range testbin.Encodings([]byte(s)) {
			if strings.Contains(logs, form) {
				t.Errorf("%s leaked into logs as %s", name, enc)
			}
		}
	}
}

// Envoy with encode_raw_headers sends header_map with raw_value bytes
// instead of the headers map; repeated headers arrive as separate entries.
func TestExtAuthzRawHeaderMap(t *testing.T) {
	a := newAuthzEnv(t, testPolicy)
	session := a.seal(t, "payments", "carol", sessionCtx)
	req := envoyRequest("GET", "/app/cart", nil)
	h := req.Attributes.Request.Http
	h.HeaderMap = &corev3.HeaderMap{}
	for _, kv := range [][2]string{{":method", "GET"}, {":path", "/app/cart"}, {":authority", "shop.example.com"}, {"cookie", "theme=dark"}, {"cookie", "session=" + session}} {
		h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])})
	}
	h.Headers, h.Path, h.Method, h.Host = nil, "", "", ""
	want := checkResult{Code: codes.OK, Set: map[string]string{"x-user": "carol", "cookie": "theme=dark"}, Remove: stripped("x-user")}
	if diff := cmp.Diff(want, a.check(t, a.tcp, req)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// Both listeners refuse peers outside --ext-authz-allowed-uids before any
// gRPC is spoken (the socket by SO_PEERCRED, the TCP port by the peer
// socket's owner in /proc/net/tcp), and the health service reports
// SERVING once keys load.
func TestExtAuthzAllowedUIDsAndHealth(t *testing.T) {
	me := uint32(os.Getuid())
	a := newAuthzEnv(t, testPolicy, func(c *Config) { c.AllowedUIDs = []uint32{me + 4242} })
	for name, c := range map[string]authv3.AuthorizationClient{"tcp": a.tcp, "unix": a.unix} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Check(ctx, envoyRequest("GET", "/healthz", nil))
		cancel()
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			t.Errorf("%s: Check from a refused uid = %v, want the connection dropped", name, err)
		}
	}
	if n := counterValue(t, a.env, `keyshift_peer_rejections_total{api="extauthz"}`); n < 2 {
		t.Errorf("extauthz rejections = %v, want at least 2", n)
	}
	if !strings.Contains(a.logs.String(), fmt.Sprintf(`"msg":"ext_authz connection refused","uid":%d,"known":true`, me)) {
		t.Errorf("the refusal log does not name uid %d", me)
	}

	a.start(t, testPolicy, func(c *Config) { c.AllowedUIDs = []uint32{me} })
	for name, c := range map[string]authv3.AuthorizationClient{"tcp": a.tcp, "unix": a.unix} {
		if diff := cmp.Diff(checkResult{Code: codes.OK, Remove: testStripped}, a.check(t, c, envoyRequest("GET", "/healthz", nil))); diff != "" {
			t.Errorf("%s, own uid (-want +got):\n%s", name, diff)
		}
	}
	hc := healthpb.NewHealthClient(a.conns[len(a.conns)-1])
	for _, svc := range []string{"", "envoy.service.auth.v3.Authorization"} {
		resp, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q = %v, %v", svc, resp.GetStatus(), err)
		}
	}
	if _, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: "keyshift.v1.Crypto"}); status.Code(err) != codes.NotFound {
		t.Errorf("health of a service not served here = %v, want NotFound", err)
	}
}

func TestExtAuthzStartErrors(t *testing.T) {
	e := newEnv(t)
	p, err := ParsePolicy([]byte(testPolicy)) // uses "webhooks", not served here
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no policy", Config{Addr: "127.0.0.1:0"}, "no policy was given"},
		{"invalid policy built in Go", Config{Addr: "127.0.0.1:0", Policy: &Policy{Default: "deny", Routes: []Route{{Prefix: "/x"}}}}, "routes[0]: no rule"},
		{"keyset not served", Config{Addr: "127.0.0.1:0", Policy: p}, `the policy uses keyset "webhooks", which this sidecar does not serve`},
		{"all interfaces", Config{Addr: ":9191", Policy: AllowAll()}, "is not a loopback address"},
		{"pod IP", Config{Addr: "10.0.0.7:9191", Policy: AllowAll()}, "is not a loopback address"},
		{"no port", Config{Addr: "127.0.0.1", Policy: AllowAll()}, "missing port"},
		{"socket is a file", Config{Socket: e.files["payments"], Policy: AllowAll()}, "is not a socket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			az, err := Start(context.Background(), e.authzConfig(tc.cfg), e.srv.Service())
			if err == nil {
				az.Stop()
				t.Fatalf("started; want error %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
	az, err := Start(context.Background(), e.authzConfig(Config{}), e.srv.Service())
	if err != nil || az.Addr() != "" {
		t.Fatalf("disabled: %v, %v", az, err)
	}
	az.Stop()
	az.Wait()
}

func TestExtAuthzPolicyErrors(t *testing.T) {
	route := func(r string) string { return `{"default": "deny", "routes": [` + r + `]}` }
	dec := func(fields string) string {
		return route(`{"prefix": "/a/", "decrypt": [{` + fields + `}]}`)
	}
	mac := func(kind, fields string) string { return route(`{"prefix": "/a/", "` + kind + `": {` + fields + `}}`) }
	tests := []struct {
		name, doc, want string
	}{
		{"not a document", `{"default": "deny",`, "yaml"},
		{"unknown top-level field", `{"default": "deny", "routes": [], "defualt": "allow"}`, `unknown field "defualt"`},
		{"unknown route field", route(`{"prefix": "/a", "allow": true, "alow": true}`), `unknown field "alow"`},
		{"unknown decrypt field", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "reseel": {}`), `unknown field "reseel"`},
		{"default missing", `{"routes": []}`, `default: missing; write "deny"`},
		{"default bad", `{"default": "maybe", "routes": []}`, `"maybe" is neither "deny" nor "allow"`},
		{"prefix missing", route(`{"allow": true}`), "routes[0].prefix: missing"},
		{"prefix relative", route(`{"prefix": "api/", "allow": true}`), `"api/" does not start with "/"`},
		{"prefix with query", route(`{"prefix": "/api?x=1", "allow": true}`), `holds "?", "#" or "%"`},
		{"prefix not clean", route(`{"prefix": "/api/../admin/", "allow": true}`), `is not a clean path; write "/admin/"`},
		{"prefix double slash", route(`{"prefix": "//api", "allow": true}`), `write "/api"`},
		{"prefix with space", route(`{"prefix": "/a b", "allow": true}`), "space, control or non-ASCII"},
		{"prefix repeated", route(`{"prefix": "/a", "allow": true}, {"prefix": "/a", "deny": true}`), `routes[1].prefix: "/a" repeats routes[0]`},
		{"empty route", route(`{"prefix": "/a"}`), "routes[0]: no rule"},
		{"allow and deny", route(`{"prefix": "/a", "allow": true, "deny": true}`), `"allow" and "deny" are exclusive`},
		{"allow and rules", route(`{"prefix": "/a", "allow": true, "sign": {"keyset": "k", "header": "x-s", "parts": ["method"]}}`), "cannot be combined"},
		{"decrypt no keyset", dec(`"cookie": "s", "to_header": "x-u"`), "routes[0].decrypt[0].keyset: missing"},
		{"decrypt bad keyset", dec(`"keyset": "Payments", "cookie": "s", "to_header": "x-u"`), `decrypt[0].keyset: "Payments"`},
		{"decrypt no source", dec(`"keyset": "k", "to_header": "x-u"`), `no source; set "cookie" or "header"`},
		{"decrypt two sources", dec(`"keyset": "k", "cookie": "s", "header": "x-t", "to_header": "x-u"`), `"cookie" and "header" are exclusive`},
		{"decrypt bad cookie name", dec(`"keyset": "k", "cookie": "a;b", "to_header": "x-u"`), "is not a valid cookie name"},
		{"decrypt header uppercase", dec(`"keyset": "k", "header": "X-Token", "to_header": "x-u"`), `must be lowercase (Envoy lowercases header names); write "x-token"`},
		{"decrypt pseudo-header", dec(`"keyset": "k", "header": ":path", "to_header": "x-u"`), "pseudo-header"},
		{"decrypt no to_header", dec(`"keyset": "k", "cookie": "s"`), "to_header: missing"},
		{"decrypt to reserved", dec(`"keyset": "k", "cookie": "s", "to_header": "cookie"`), `"cookie" cannot be written by a policy`},
		{"decrypt to itself", dec(`"keyset": "k", "header": "x-t", "to_header": "x-t"`), "is the source header"},
		{"decrypt bad encoding", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "to_encoding": "hex"`), `"hex" is neither "raw" nor "base64url"`},
		{"decrypt bad context", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "context": {"": "v"}`), "decrypt[0].context"},
		{"reseal empty", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "reseal": {}`), "reseal: empty"},
		{"reseal cookie from header", dec(`"keyset": "k", "header": "x-t", "to_header": "x-u", "reseal": {"cookie": {}}`), "comes from a header"},
		{"reseal both", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "reseal": {"header": "x-r", "cookie": {}}`), `"header" and "cookie" are exclusive`},
		{"reseal bad same_site", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "reseal": {"cookie": {"same_site": "loose"}}`), `"loose" is not "lax"`},
		{"reseal none insecure", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "reseal": {"cookie": {"same_site": "none", "secure": false}}`), `requires "secure": true`},
		{"reseal bad path", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "reseal": {"cookie": {"path": "a"}}`), `must start with "/"`},
		{"reseal bad domain", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "reseal": {"cookie": {"domain": "bad..example"}}`), "invalid Cookie.Domain"},
		{"reseal negative max age", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "reseal": {"cookie": {"max_age_seconds": -1}}`), "is negative"},
		{"two rules one header", route(`{"prefix": "/a", "decrypt": [{"keyset": "k", "cookie": "s", "to_header": "x-u"}, {"keyset": "k", "cookie": "t", "to_header": "x-u"}]}`), `header "x-u" is also written by routes[0].decrypt[0].to_header`},
		{"two rules one cookie", route(`{"prefix": "/a", "decrypt": [{"keyset": "k", "cookie": "s", "to_header": "x-u"}, {"keyset": "k", "cookie": "s", "to_header": "x-v"}]}`), `cookie "s" is also read by`},
		{"sign onto decrypted header", route(`{"prefix": "/a", "decrypt": [{"keyset": "k", "cookie": "s", "to_header": "x-u"}], "sign": {"keyset": "k", "header": "x-u", "parts": ["method"]}}`), "sign.header"},
		{"verify no header", mac("verify", `"keyset": "k", "parts": ["method"]`), "verify.header: missing"},
		{"verify no parts", mac("verify", `"keyset": "k", "header": "x-sig"`), "verify.parts: empty"},
		{"verify bad part", mac("verify", `"keyset": "k", "header": "x-sig", "parts": ["body"]`), `"body" is not one of`},
		{"verify repeated part", mac("verify", `"keyset": "k", "header": "x-sig", "parts": ["path", "path"]`), `parts[1]: "path" is listed twice`},
		{"verify covers itself", mac("verify", `"keyset": "k", "header": "x-sig", "parts": ["header:x-sig"]`), "cannot cover its own header"},
		{"verify uppercase part", mac("verify", `"keyset": "k", "header": "x-sig", "parts": ["header:X-Id"]`), `write "x-id"`},
		{"sign no keyset", mac("sign", `"header": "x-sig", "parts": ["method"]`), "sign.keyset: missing"},
		{"prefix same segments", route(`{"prefix": "/a", "allow": true}, {"prefix": "/a/", "deny": true}`), `"/a/" and routes[0]'s "/a" match the same paths`},
		{"decrypt names the purpose", dec(`"keyset": "k", "cookie": "s", "to_header": "x-u", "context": {"keyshift.io/purpose": "ext-authz-token"}`), `"keyshift.io/purpose" is reserved`},
		{"decrypt to timestamp", dec(`"keyset": "k", "cookie": "s", "to_header": "x-keyshift-timestamp"`), `"x-keyshift-timestamp" cannot be written by a policy`},
		{"sign into nonce", mac("sign", `"keyset": "k", "header": "x-keyshift-nonce", "parts": ["method"]`), `"x-keyshift-nonce" cannot be written by a policy`},
		{"verify covers timestamp", mac("verify", `"keyset": "k", "header": "x-sig", "parts": ["header:x-keyshift-timestamp"]`), "is always covered"},
		{"verify skew negative", mac("verify", `"keyset": "k", "header": "x-sig", "parts": ["method"], "max_skew_seconds": -1`), "-1 is outside 1 to 3600"},
		{"verify skew too long", mac("verify", `"keyset": "k", "header": "x-sig", "parts": ["method"], "max_skew_seconds": 86400`), "86400 is outside 1 to 3600"},
		{"sign with skew", mac("sign", `"keyset": "k", "header": "x-sig", "parts": ["method"], "max_skew_seconds": 60`), "apply to verify only"},
		{"sign with nonce", mac("sign", `"keyset": "k", "header": "x-sig", "parts": ["method"], "require_nonce": true`), "apply to verify only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tc.doc))
			if !errors.Is(err, ErrPolicy) {
				t.Fatalf("error %v, want ErrPolicy", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}

	dir := t.TempDir()
	if _, err := LoadPolicy(filepath.Join(dir, "absent.json")); !errors.Is(err, ErrPolicy) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.json")
	if err := os.WriteFile(big, make([]byte, maxPolicyBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPolicy(big); !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
}

// The shipped examples load: the commented YAML policy, the same policy as
// JSON, and the copy embedded in the Istio ConfigMap.
func TestExtAuthzPolicyExamples(t *testing.T) {
	y, err := LoadPolicy("../../../examples/extauthz-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &Policy{Default: "deny", Routes: []Route{
		{Prefix: "/healthz", Allow: true},
		{Prefix: "/admin/", Deny: true},
		{Prefix: "/app/", Decrypt: []DecryptRule{{
			Keyset: "payments", Cookie: "session", ToHeader: "x-user", Context: map[string]string{"purpose": "session"},
			Reseal: &Reseal{Cookie: &Cookie{Path: "/", MaxAgeSeconds: 86400, SameSite: "lax"}},
		}}},
		{Prefix: "/api/", Decrypt: []DecryptRule{{
			Keyset: "payments", Header: "x-api-token", ToHeader: "x-api-token-plain", ToEncoding: "base64url",
			Reseal: &Reseal{Header: "x-api-token-resealed"},
		}}},
		{Prefix: "/public/", Decrypt: []DecryptRule{{
			Keyset: "payments", Cookie: "session", ToHeader: "x-user", Context: map[string]string{"purpose": "session"}, Optional: true,
		}}},
		{Prefix: "/hooks/", Verify: &MACRule{Keyset: "webhooks", Header: "x-keyshift-signature", Parts: []string{"method", "path", "query", "header:x-request-id", "header:content-type"},
			MaxSkewSeconds: 300, RequireNonce: true}},
		{Prefix: "/internal/",
			Decrypt: []DecryptRule{{Keyset: "payments", Cookie: "session", ToHeader: "x-user", Context: map[string]string{"purpose": "session"},
				Reseal: &Reseal{Cookie: &Cookie{SameSite: "strict"}}}},
			Sign: &MACRule{Keyset: "webhooks", Header: "x-keyshift-proxy-mac", Parts: []string{"method", "path", "header:x-user"}}},
	}}
	ignore := cmpopts.IgnoreUnexported(Policy{}, DecryptRule{})
	if diff := cmp.Diff(want, y, ignore); diff != "" {
		t.Errorf("example policy (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"payments", "webhooks"}, y.Keysets()); diff != "" {
		t.Errorf("Keysets (-want +got):\n%s", diff)
	}

	raw, err := os.ReadFile("../../../examples/extauthz-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	asJSON, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	j, err := ParsePolicy(asJSON)
	if err != nil {
		t.Fatalf("the JSON form: %v", err)
	}
	if diff := cmp.Diff(want, j, ignore); diff != "" {
		t.Errorf("JSON form (-want +got):\n%s", diff)
	}

	cmRaw, err := os.ReadFile("../../../examples/istio/keyshift-extauthz-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Kind string            `json:"kind"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(cmRaw, &cm); err != nil || cm.Kind != "ConfigMap" {
		t.Fatalf("Istio policy ConfigMap: kind %q, %v", cm.Kind, err)
	}
	if _, err := ParsePolicy([]byte(cm.Data["policy.yaml"])); err != nil {
		t.Errorf("policy.yaml in the Istio ConfigMap: %v", err)
	}
}

// Route matching and path normalisation, pure.
func TestExtAuthzRouteMatch(t *testing.T) {
	p, err := ParsePolicy([]byte(`{"default": "allow", "routes": [
		{"prefix": "/", "allow": true}, {"prefix": "/api", "deny": true}, {"prefix": "/api/v2/", "allow": true}, {"prefix": "/api/v2/admin", "deny": true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, want string }{
		{"/", "/"},
		{"/index.html?q=/api", "/"},
		{"/api", "/api"},
		{"/apiv1", "/"},
		{"/api/v2", "/api/v2/"},
		{"/api/v2x", "/api"},
		{"/api/v2/adminx", "/api/v2/"},
		{"/api/v2/", "/api/v2/"},
		{"/api/v2/orders?x=/api/v2/admin", "/api/v2/"},
		{"/api/v2/admin/users", "/api/v2/admin"},
		{"/api/v2/./admin", "/api/v2/admin"},
		{"/api/v2/x/../admin", "/api/v2/admin"},
		{"/api/v2/%61dmin", "/api/v2/admin"},
		{"/api//v2//admin", "/api/v2/admin"},
		{"/api/v2/admin#frag", "/api/v2/admin"},
	}
	for _, tc := range tests {
		raw, _, _ := strings.Cut(tc.path, "?")
		raw, _, _ = strings.Cut(raw, "#")
		mp, ok := matchPath(raw)
		if !ok {
			t.Errorf("%s: not matchable", tc.path)
			continue
		}
		if got := p.match(mp); got == nil || got.Prefix != tc.want {
			t.Errorf("%s matched %v, want %s", tc.path, got, tc.want)
		}
	}
	for _, bad := range []string{"", "*", "api", "/a/%zz", "http://h/a", "/a;b", "/a/..;/b", "/a%3bb", `/a\b`, "/a%5cb", "/a%2541", "/a%00", "/a\x7f"} {
		if _, ok := matchPath(bad); ok {
			t.Errorf("matchPath(%q) ok; want refused", bad)
		}
	}
}

func TestExtAuthzMACFormat(t *testing.T) {
	mac := []byte{0xfb, 0xff, 0x01}
	if got := formatMAC(12, mac); got != "v12.-_8B" {
		t.Errorf("formatMAC = %q", got)
	}
	tests := []struct {
		in      string
		version uint32
		ok      bool
	}{
		{"v12.-_8B", 12, true},
		{"v4294967295.AQ", 4294967295, true},
		{"v4294967296.AQ", 0, false},
		{"12.-_8B", 0, false},
		{"v.AQ", 0, false},
		{"v012.AQ", 0, false},
		{"v1.", 0, false},
		{"v1.AQ==", 0, false},
		{"v1.+/8B", 0, false},
		{"v-1.AQ", 0, false},
		{"v1AQ", 0, false},
	}
	for _, tc := range tests {
		v, _, ok := parseMAC(tc.in)
		if v != tc.version || ok != tc.ok {
			t.Errorf("parseMAC(%q) = %d, %v; want %d, %v", tc.in, v, ok, tc.version, tc.ok)
		}
	}
	header := func(h string) string { return map[string]string{"x-id": "42"}[h] }
	got, ok := canonicalRequest(macDomainSender, "1700000000", "", []string{"authority", "header:x-id", "header:x-absent", "method"}, requestParts{method: "GET", authority: "h.example"}, header)
	if want := "keyshift-request-mac-v2/sender\ntimestamp=1700000000\nnonce=\nauthority=h.example\nheader:x-id=42\nheader:x-absent=\nmethod=GET"; !ok || string(got) != want {
		t.Errorf("canonicalRequest = %q, %v; want %q", got, ok, want)
	}
	got, ok = canonicalRequest(macDomainProxy, "1700000001", "bm9uY2Vub25jZW5vbmNl", []string{"path"}, requestParts{path: "/a"}, header)
	if want := "keyshift-request-mac-v2/proxy\ntimestamp=1700000001\nnonce=bm9uY2Vub25jZW5vbmNl\npath=/a"; !ok || string(got) != want {
		t.Errorf("canonicalRequest = %q, %v; want %q", got, ok, want)
	}
	if _, ok := canonicalRequest(macDomainSender, "1", "", []string{"header:x-id"}, requestParts{}, func(string) string { return "a\nmethod=POST" }); ok {
		t.Error("a newline in a signed value must refuse the request")
	}
}

func TestExtAuthzCookies(t *testing.T) {
	cookies := parseCookies(`theme=dark;  session="abc"; flag; session=def; _ga=GA1.2.3=4`)
	got := joinCookies(cookies, map[string]bool{"session": true})
	if want := "theme=dark; flag; _ga=GA1.2.3=4"; got != want {
		t.Errorf("joinCookies = %q, want %q", got, want)
	}
	if ct, err := decodeToken(`"AQID"`); err != nil || string(ct) != "\x01\x02\x03" {
		t.Errorf("quoted cookie value: %x, %v", ct, err)
	}
	// Several same-named cookies (different paths): the first that opens wins.
	a := newAuthzEnv(t, testPolicy)
	good := a.seal(t, "payments", "dave", sessionCtx)
	got2 := a.check(t, a.tcp, envoyRequest("GET", "/app/x", map[string]string{"cookie": "session=stale; session=" + good + "; theme=dark"}))
	if diff := cmp.Diff(checkResult{Code: codes.OK, Set: map[string]string{"x-user": "dave", "cookie": "theme=dark"}, Remove: stripped("x-user")}, got2); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// The decision never prints a header value.
func TestExtAuthzDecisionRedacted(t *testing.T) {
	d := authzDecision{allowed: true, route: "/app/", upstream: []headerKV{{"x-user", "SECRET-1"}}, downstream: []headerKV{{"set-cookie", "session=SECRET-2"}}}
	for _, s := range []string{d.String(), fmt.Sprint(d), d.LogValue().String()} {
		if strings.Contains(s, "SECRET") || !strings.Contains(s, "x-user") {
			t.Errorf("decision prints as %q", s)
		}
	}
}

// No Envoy binary can run here, so the Envoy example is checked against
// Envoy's own API: it must parse as a v3 Bootstrap (unknown fields and
// unknown typed_config types fail), pass the protoc-gen-validate rules of
// every message, typed configs included, and point at the sidecar's
// documented socket and port.
func TestExtAuthzEnvoyExampleIsValidBootstrap(t *testing.T) {
	raw, err := os.ReadFile("../../../examples/envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &bs); err != nil {
		t.Fatalf("not a valid Envoy v3 Bootstrap: %v", err)
	}
	var typed []string
	validateTree(t, bs.ProtoReflect(), "bootstrap", &typed)
	slices.Sort(typed)
	want := []string{
		"envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
		"envoy.extensions.filters.http.router.v3.Router", "envoy.extensions.filters.http.router.v3.Router",
		"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
	}
	if diff := cmp.Diff(want, typed); diff != "" {
		t.Errorf("typed configs (-want +got):\n%s", diff)
	}
	endpoints := map[string]string{}
	for _, c := range bs.GetStaticResources().GetClusters() {
		a := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
		if p := a.GetPipe(); p != nil {
			endpoints[c.GetName()] = "unix:" + p.GetPath()
		} else {
			endpoints[c.GetName()] = fmt.Sprintf("%s:%d", a.GetSocketAddress().GetAddress(), a.GetSocketAddress().GetPortValue())
		}
	}
	wantEP := map[string]string{"keyshift_extauthz_uds": "unix:/var/run/keyshift/extauthz.sock", "keyshift_extauthz_tcp": "127.0.0.1:9191", "app": "127.0.0.1:8000"}
	if diff := cmp.Diff(wantEP, endpoints); diff != "" {
		t.Errorf("cluster endpoints (-want +got):\n%s", diff)
	}
}

// validateTree runs protoc-gen-validate's ValidateAll on m and on every
// message below it, unpacking Any values, and records the Any types seen.
func validateTree(t *testing.T, m protoreflect.Message, where string, typed *[]string) {
	t.Helper()
	if v, ok := m.Interface().(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	if anyMsg, ok := m.Interface().(*anypb.Any); ok {
		inner, err := anyMsg.UnmarshalNew()
		if err != nil {
			t.Errorf("%s: %v", where, err)
			return
		}
		*typed = append(*typed, string(inner.ProtoReflect().Descriptor().FullName()))
		validateTree(t, inner.ProtoReflect(), where+"("+string(inner.ProtoReflect().Descriptor().Name())+")", typed)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := where + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				validateTree(t, v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), typed)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				validateTree(t, mv.Message(), name+"["+k.String()+"]", typed)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			validateTree(t, v.Message(), name, typed)
		}
		return true
	})
}

// The Istio examples agree with each other and with the sidecar: the
// AuthorizationPolicy names the provider the mesh config defines, the
// provider's host is the ServiceEntry on 127.0.0.1, and the port is the
// injector's default ext_authz port.
func TestExtAuthzIstioExamplesAgree(t *testing.T) {
	type doc struct {
		Kind string `json:"kind"`
		Spec struct {
			MeshConfig struct {
				ExtensionProviders []struct {
					Name              string `json:"name"`
					EnvoyExtAuthzGrpc struct {
						Service  string `json:"service"`
						Port     int    `json:"port"`
						FailOpen bool   `json:"failOpen"`
					} `json:"envoyExtAuthzGrpc"`
				} `json:"extensionProviders"`
			} `json:"meshConfig"`
			Hosts     []string            `json:"hosts"`
			Endpoints []map[string]string `json:"endpoints"`
			Ports     []struct {
				Number   int    `json:"number"`
				Protocol string `json:"protocol"`
			} `json:"ports"`
			Action   string `json:"action"`
			Provider struct {
				Name string `json:"name"`
			} `json:"provider"`
		} `json:"spec"`
	}
	byKind := map[string]doc{}
	for _, f := range []string{"mesh-config.yaml", "authorization-policy.yaml"} {
		raw, err := os.ReadFile(filepath.Join("../../../examples/istio", f))
		if err != nil {
			t.Fatal(err)
		}
		for part := range strings.SplitSeq(string(raw), "\n---\n") {
			var d doc
			if err := yaml.Unmarshal([]byte(part), &d); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			byKind[d.Kind] = d
		}
	}
	mesh, se, ap := byKind["IstioOperator"], byKind["ServiceEntry"], byKind["AuthorizationPolicy"]
	if len(mesh.Spec.MeshConfig.ExtensionProviders) != 1 {
		t.Fatalf("extensionProviders: %+v", mesh.Spec.MeshConfig.ExtensionProviders)
	}
	p := mesh.Spec.MeshConfig.ExtensionProviders[0]
	got := []string{p.Name, p.EnvoyExtAuthzGrpc.Service, fmt.Sprint(p.EnvoyExtAuthzGrpc.Port, p.EnvoyExtAuthzGrpc.FailOpen),
		ap.Spec.Action, ap.Spec.Provider.Name, strings.Join(se.Spec.Hosts, ","), se.Spec.Endpoints[0]["address"],
		fmt.Sprintf("%d %s", se.Spec.Ports[0].Number, se.Spec.Ports[0].Protocol)}
	want := []string{"keyshift-ext-authz", "keyshift-extauthz.local", "9191 false",
		"CUSTOM", "keyshift-ext-authz", "keyshift-extauthz.local", "127.0.0.1", "9191 GRPC"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
