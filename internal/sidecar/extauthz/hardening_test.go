package extauthz

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"

	"github.com/keyshift/keyshift/internal/keyset"
)

// Regression tests for the ext_authz security review: identity headers on
// allow routes and ambiguous paths (finding 3), context-free ciphertexts
// accepted as tokens (finding 4), and request MACs that never expire and
// sign routes that mint MACs for verify routes (finding 5). The names and
// values below are written out as the policy doc gives them, so a change
// of wire format fails here.

// tokenCtx is the context an app seals an ext_authz token with: the
// reserved purpose plus whatever the rule names.
func tokenCtx(rule map[string]string) map[string]string {
	c := map[string]string{"keyshift.io/purpose": "ext-authz-token"}
	for k, v := range rule {
		c[k] = v
	}
	return c
}

// examplePolicy is the shipped examples/extauthz-policy.yaml, unchanged.
func examplePolicy(t testing.TB) string {
	t.Helper()
	raw, err := os.ReadFile("../../../examples/extauthz-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// exampleStripped is every upstream header a rule of the example policy
// can write, sorted: they are removed from every allowed request that does
// not get them from the policy itself.
var exampleStripped = []string{"x-api-token-plain", "x-keyshift-nonce", "x-keyshift-proxy-mac", "x-keyshift-timestamp", "x-user"}

// Finding 3: with the example policy, "/healthz/..;/admin/" matched the
// /healthz allow route and went upstream with the client's own x-user,
// while Tomcat, Jetty and Spring read it as /admin/. Such paths are now
// refused, and allowed requests lose every header the policy writes.
func TestExtAuthzExampleIdentityHeaderExploit(t *testing.T) {
	a := newAuthzEnv(t, examplePolicy(t))
	alice := map[string]string{"x-user": "alice"}
	for _, path := range []string{
		"/healthz/..;/admin/",           // the report's exploit
		"/healthz;/../admin/",           // a parameter on the matched segment
		"/healthz/%2e%2e;/admin/",       // the same with encoded dots
		"/healthz/%3B/../admin/",        // ";" encoded
		`/healthz/..\admin/`,            // backslash as a separator (IIS, some Java)
		"/healthz/%5C..%5Cadmin/",       // backslash encoded
		"/healthz/%252e%252e/admin/",    // double encoding: "%" left after one decode
		"/healthz/%25/admin/",           // a lone encoded "%"
		"/healthz/%00/admin/",           // NUL
		"/healthz/x%0d%0ax-user:%20bob", // CR LF
	} {
		t.Run(path, func(t *testing.T) {
			got := a.check(t, a.unix, envoyRequest("GET", path, alice))
			if diff := cmp.Diff(denied(400, "bad_path"), got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if n := counterValue(t, a.env, `keyshift_extauthz_denials_total{reason="bad_path",route="default"}`); n != 10 {
		t.Errorf("bad_path denials counted %v, want 10", n)
	}

	// The allow route itself passes, without the forged identity.
	got := a.check(t, a.tcp, envoyRequest("GET", "/healthz", map[string]string{"x-user": "alice", "x-keyshift-proxy-mac": "v1.forged"}))
	if diff := cmp.Diff(checkResult{Code: codes.OK, Remove: exampleStripped}, got); diff != "" {
		t.Errorf("allow route (-want +got):\n%s", diff)
	}
}

// Finding 3: every allowed decision strips the headers any rule of the
// policy can write, except those it sets itself: allow routes, the default
// allow, decrypt routes (whose rules write other headers) and verify routes.
func TestExtAuthzStripsPolicyHeadersOnEveryDecision(t *testing.T) {
	a := newAuthzEnv(t, examplePolicy(t))
	forged := map[string]string{"x-user": "admin", "x-api-token-plain": "forged", "x-keyshift-proxy-mac": "v1.AAAA",
		"x-keyshift-timestamp": "1", "x-keyshift-nonce": "n"}
	with := func(extra map[string]string) map[string]string {
		h := map[string]string{}
		for k, v := range forged {
			h[k] = v
		}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	session := a.seal(t, "payments", "alice", tokenCtx(map[string]string{"purpose": "session"}))
	token := a.seal(t, "payments", "tok", tokenCtx(nil))
	now := time.Now().Unix()
	const rid = "6c1f8e0e-4a1b-4f9e-9a57-0d4c1f7e2b11"
	const nonce = "3q2-7wAAAAAAAAAAAAAAAA"
	_, mac, err := a.srv.Service().Sign(ctxT(t), "webhooks", []byte(fmt.Sprintf(
		"keyshift-request-mac-v2/sender\ntimestamp=%d\nnonce=%s\nmethod=POST\npath=/hooks/pay\nquery=\nheader:x-request-id=%s\nheader:content-type=application/json", now, nonce, rid)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, path string
		headers            map[string]string
		want               checkResult
	}{
		{"allow route", "GET", "/healthz/live", forged, checkResult{Code: codes.OK, Remove: exampleStripped}},
		{"decrypt route", "GET", "/app/cart", with(map[string]string{"cookie": "session=" + session}), checkResult{Code: codes.OK,
			Set:    map[string]string{"x-user": "alice"},
			Remove: []string{"cookie", "x-api-token-plain", "x-keyshift-nonce", "x-keyshift-proxy-mac", "x-keyshift-timestamp"}}},
		{"header decrypt route", "GET", "/api/orders", with(map[string]string{"x-api-token": token}), checkResult{Code: codes.OK,
			Set:    map[string]string{"x-api-token-plain": base64.RawURLEncoding.EncodeToString([]byte("tok"))},
			Remove: []string{"x-api-token", "x-keyshift-nonce", "x-keyshift-proxy-mac", "x-keyshift-timestamp", "x-user"}}},
		{"optional cookie absent", "GET", "/public/x", forged, checkResult{Code: codes.OK,
			Remove: []string{"x-user", "x-api-token-plain", "x-keyshift-nonce", "x-keyshift-proxy-mac", "x-keyshift-timestamp"}}},
		{"verify route", "POST", "/hooks/pay", with(map[string]string{"x-keyshift-signature": formatMAC(1, mac),
			"x-keyshift-timestamp": strconv.FormatInt(now, 10), "x-keyshift-nonce": nonce, "content-type": "application/json"}),
			checkResult{Code: codes.OK, Remove: exampleStripped}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, a.check(t, a.unix, envoyRequest(tc.method, tc.path, tc.headers))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}

	// The default allow strips too.
	b := newAuthzEnv(t, `{"default": "allow", "routes": [
		{"prefix": "/app/", "decrypt": [{"keyset": "payments", "cookie": "session", "to_header": "x-user"}]}]}`)
	got := b.check(t, b.tcp, envoyRequest("GET", "/elsewhere", map[string]string{"x-user": "admin"}))
	if diff := cmp.Diff(checkResult{Code: codes.OK, Remove: []string{"x-user"}}, got); diff != "" {
		t.Errorf("default allow (-want +got):\n%s", diff)
	}
}

// Finding 3: a prefix matches whole path segments ("/healthz" is not a
// prefix of "/healthzX"; "/admin/" covers "/admin"), case-sensitively.
func TestExtAuthzRouteSegmentBoundary(t *testing.T) {
	p, err := ParsePolicy([]byte(`{"default": "allow", "routes": [
		{"prefix": "/healthz", "allow": true}, {"prefix": "/admin/", "deny": true}, {"prefix": "/", "allow": true}, {"prefix": "/a/b", "deny": true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, want string }{
		{"/healthz", "/healthz"},
		{"/healthz/", "/healthz"},
		{"/healthz/x", "/healthz"},
		{"/healthzX", "/"},
		{"/healthz.json", "/"},
		{"/admin", "/admin/"},
		{"/admin/", "/admin/"},
		{"/admin/users", "/admin/"},
		{"/administrator", "/"},
		{"/a/b", "/a/b"},
		{"/a/bc", "/"},
		{"/a/b/c", "/a/b"},
		// Case-sensitive, as Envoy's prefix match and most servers.
		{"/Admin/users", "/"},
		{"/HEALTHZ", "/"},
	}
	for _, tc := range tests {
		mp, ok := matchPath(tc.path)
		if !ok {
			t.Errorf("%s: not matchable", tc.path)
			continue
		}
		if got := p.match(mp); got == nil || got.Prefix != tc.want {
			t.Errorf("%s matched %v, want %s", tc.path, got, tc.want)
		}
	}
}

// Finding 4: the canary in every keyset document is a context-free
// ciphertext of a printable string. Made exactly as the controller makes
// it (rotation.Create seals keyset.CanaryPlaintext with no context), it
// must not pass as a token on a route whose rule names no context.
func TestExtAuthzCanaryIsNotAToken(t *testing.T) {
	a := newAuthzEnv(t, examplePolicy(t))
	canary := a.keyset("payments").Versions[0].Canary
	if len(canary) == 0 {
		t.Fatal("the keyset document holds no canary")
	}
	// It is a real canary: it opens with no context to the canary text.
	o, err := a.srv.Service().Decrypt(ctxT(t), canary, nil)
	if err != nil || string(o.Plaintext) != string(keyset.CanaryPlaintext("payments", 1)) {
		t.Fatalf("canary opens to %q, %v", o.Plaintext, err)
	}
	value := base64.RawURLEncoding.EncodeToString(canary)
	for _, req := range []*authv3.CheckRequest{
		envoyRequest("GET", "/api/orders", map[string]string{"x-api-token": value}),
		envoyRequest("GET", "/app/cart", map[string]string{"cookie": "session=" + value}),
		envoyRequest("GET", "/public/x", map[string]string{"cookie": "session=" + value}),
	} {
		if diff := cmp.Diff(denied(401, "auth_failed"), a.check(t, a.tcp, req)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", req.Attributes.Request.Http.Path, diff)
		}
	}
}

// Finding 4: the app's own context-free ciphertexts are not tokens either;
// one sealed with the reserved purpose is.
func TestExtAuthzContextFreeCiphertextDenied(t *testing.T) {
	a := newAuthzEnv(t, examplePolicy(t))
	appData := a.seal(t, "payments", "4111-1111-1111-1111", nil)
	got := a.check(t, a.tcp, envoyRequest("GET", "/api/orders", map[string]string{"x-api-token": appData}))
	if diff := cmp.Diff(denied(401, "auth_failed"), got); diff != "" {
		t.Errorf("context-free app data (-want +got):\n%s", diff)
	}
	// The rule's own context without the purpose is not enough.
	session := a.seal(t, "payments", "alice", map[string]string{"purpose": "session"})
	got = a.check(t, a.tcp, envoyRequest("GET", "/app/cart", map[string]string{"cookie": "session=" + session}))
	if diff := cmp.Diff(denied(401, "auth_failed"), got); diff != "" {
		t.Errorf("session without the purpose (-want +got):\n%s", diff)
	}
	token := a.seal(t, "payments", "tok", tokenCtx(nil))
	got = a.check(t, a.tcp, envoyRequest("GET", "/api/orders", map[string]string{"x-api-token": token}))
	want := checkResult{Code: codes.OK, Set: map[string]string{"x-api-token-plain": base64.RawURLEncoding.EncodeToString([]byte("tok"))},
		Remove: []string{"x-api-token", "x-keyshift-nonce", "x-keyshift-proxy-mac", "x-keyshift-timestamp", "x-user"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("token with the purpose (-want +got):\n%s", diff)
	}
}

// Finding 4: a rule may not name the reserved key itself (with another
// value it could open ciphertexts sealed for some other purpose).
func TestExtAuthzPolicyRefusesReservedContext(t *testing.T) {
	for _, ctx := range []string{`{"keyshift.io/purpose": "ext-authz-token"}`, `{"keyshift.io/purpose": "other"}`} {
		_, err := ParsePolicy([]byte(`{"default": "deny", "routes": [{"prefix": "/a/", "decrypt": [
			{"keyset": "k", "cookie": "s", "to_header": "x-u", "context": ` + ctx + `}]}]}`))
		if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "is reserved") {
			t.Errorf("context %s: %v; want refused as reserved", ctx, err)
		}
	}
}

// hookPolicy has a sign route and a verify route over the same keyset and
// parts, so a MAC the proxy adds upstream would verify on the hook if both
// directions signed the same bytes: any client could have the proxy sign
// its x-user on /internal/ and, if the upstream ever shows it the MAC
// (an echo, a debug page, a log), present it on /hooks/.
const hookPolicy = `{"default": "deny", "routes": [
  {"prefix": "/hooks/", "verify": {"keyset": "webhooks", "header": "x-sig", "parts": ["method", "header:x-user"]}},
  {"prefix": "/internal/", "sign": {"keyset": "webhooks", "header": "x-proxy-mac", "parts": ["method", "header:x-user"]}}
]}`

// noncePolicy requires a nonce and narrows the window to two minutes.
const noncePolicy = `{"default": "deny", "routes": [
  {"prefix": "/nonce/", "verify": {"keyset": "webhooks", "header": "x-sig", "parts": ["method", "path"], "require_nonce": true, "max_skew_seconds": 120}}
]}`

// senderMAC signs the canonical bytes a sender signs, written out.
func senderMAC(t *testing.T, a *authzEnv, ts int64, nonce string, lines string) string {
	t.Helper()
	v, mac, err := a.srv.Service().Sign(ctxT(t), "webhooks", []byte(fmt.Sprintf("keyshift-request-mac-v2/sender\ntimestamp=%d\nnonce=%s\n%s", ts, nonce, lines)))
	if err != nil {
		t.Fatal(err)
	}
	return formatMAC(v, mac)
}

// Finding 5: request MACs carry a signed timestamp checked against a skew
// window, and an optional nonce that cannot be replayed.
func TestExtAuthzRequestMACFreshness(t *testing.T) {
	a := newAuthzEnv(t, hookPolicy)
	now := time.Now().Unix()
	hook := func(ts int64, sig string, extra ...string) *authv3.CheckRequest {
		h := map[string]string{"x-sig": sig, "x-user": "bob"}
		if ts != 0 {
			h["x-keyshift-timestamp"] = strconv.FormatInt(ts, 10)
		}
		for i := 0; i+1 < len(extra); i += 2 {
			h[extra[i]] = extra[i+1]
		}
		return envoyRequest("POST", "/hooks/pay", h)
	}
	const lines = "method=POST\nheader:x-user=bob"
	// The sign route writes these, so every allowed request loses them.
	ok := checkResult{Code: codes.OK, Remove: []string{"x-keyshift-nonce", "x-keyshift-timestamp", "x-proxy-mac"}}
	old, future := now-300-60, now+300+60
	tests := []struct {
		name string
		req  *authv3.CheckRequest
		want checkResult
	}{
		{"valid", hook(now, senderMAC(t, a, now, "", lines)), ok},
		{"valid, at the edge of the window", hook(now-290, senderMAC(t, a, now-290, "", lines)), ok},
		{"valid with an unrequired nonce", hook(now, senderMAC(t, a, now, "n-1234567890abcdef", lines), "x-keyshift-nonce", "n-1234567890abcdef"), ok},
		{"expired", hook(old, senderMAC(t, a, old, "", lines)), denied(401, "stale_timestamp")},
		{"future beyond skew", hook(future, senderMAC(t, a, future, "", lines)), denied(401, "future_timestamp")},
		{"timestamp changed", hook(now, senderMAC(t, a, now-1, "", lines)), denied(401, "bad_mac")},
		{"nonce added", hook(now, senderMAC(t, a, now, "", lines), "x-keyshift-nonce", "n-1234567890abcdef"), denied(401, "bad_mac")},
		{"no timestamp", hook(0, senderMAC(t, a, now, "", lines)), denied(401, "missing_timestamp")},
		{"timestamp not unix seconds", hook(0, senderMAC(t, a, now, "", lines), "x-keyshift-timestamp", "2024-01-01T00:00:00Z"), denied(401, "bad_timestamp")},
		{"signed timestamp", hook(0, senderMAC(t, a, now, "", lines), "x-keyshift-timestamp", "+"+strconv.FormatInt(now, 10)), denied(401, "bad_timestamp")},
	}
	// The old v1 MAC had no timestamp and never expired.
	_, v1mac, err := a.srv.Service().Sign(ctxT(t), "webhooks", []byte("keyshift-request-mac-v1\n"+lines))
	if err != nil {
		t.Fatal(err)
	}
	tests = append(tests, struct {
		name string
		req  *authv3.CheckRequest
		want checkResult
	}{"v1 MAC without a timestamp", hook(0, formatMAC(1, v1mac)), denied(401, "missing_timestamp")})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, a.check(t, a.unix, tc.req)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if n := counterValue(t, a.env, `keyshift_extauthz_denials_total{reason="stale_timestamp",route="/hooks/"}`); n != 1 {
		t.Errorf("stale_timestamp denials counted %v, want 1", n)
	}

	// A route that requires a nonce remembers each within the window.
	a.start(t, noncePolicy)
	ok = checkResult{Code: codes.OK}
	nonceReq := func(ts int64, nonce, sig string) *authv3.CheckRequest {
		h := map[string]string{"x-sig": sig, "x-keyshift-timestamp": strconv.FormatInt(ts, 10)}
		if nonce != "" {
			h["x-keyshift-nonce"] = nonce
		}
		return envoyRequest("PUT", "/nonce/x", h)
	}
	const nonce = "3q2-7wAAAAAAAAAAAAAAAA"
	sig := senderMAC(t, a, now, nonce, "method=PUT\npath=/nonce/x")
	steps := []struct {
		name string
		req  *authv3.CheckRequest
		want checkResult
	}{
		{"first use", nonceReq(now, nonce, sig), ok},
		{"replayed", nonceReq(now, nonce, sig), denied(401, "replayed_nonce")},
		{"replayed over the other transport", nonceReq(now, nonce, sig), denied(401, "replayed_nonce")},
		{"missing nonce", nonceReq(now, "", senderMAC(t, a, now, "", "method=PUT\npath=/nonce/x")), denied(401, "missing_nonce")},
		{"nonce too short", nonceReq(now, "abc", senderMAC(t, a, now, "abc", "method=PUT\npath=/nonce/x")), denied(401, "bad_nonce")},
		{"a fresh nonce", nonceReq(now, "AAAAAAAAAAAAAAAAAAAAAB", senderMAC(t, a, now, "AAAAAAAAAAAAAAAAAAAAAB", "method=PUT\npath=/nonce/x")), ok},
		// 120 s skew on this route: 130 s old is out although the default is 300.
		{"outside this route's window", nonceReq(now-130, "AAAAAAAAAAAAAAAAAAAAAC", senderMAC(t, a, now-130, "AAAAAAAAAAAAAAAAAAAAAC", "method=PUT\npath=/nonce/x")), denied(401, "stale_timestamp")},
	}
	for i, st := range steps {
		c := a.unix
		if i%2 == 1 {
			c = a.tcp
		}
		if diff := cmp.Diff(st.want, a.check(t, c, st.req)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", st.name, diff)
		}
	}
	// A bad MAC does not burn the nonce it carries.
	const spare = "AAAAAAAAAAAAAAAAAAAAAD"
	if diff := cmp.Diff(denied(401, "bad_mac"), a.check(t, a.unix, nonceReq(now, spare, senderMAC(t, a, now, spare, "method=GET\npath=/nonce/x")))); diff != "" {
		t.Errorf("bad MAC (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(ok, a.check(t, a.unix, nonceReq(now, spare, senderMAC(t, a, now, spare, "method=PUT\npath=/nonce/x")))); diff != "" {
		t.Errorf("the nonce after a bad MAC (-want +got):\n%s", diff)
	}
}

// Finding 5: the MAC a sign route adds upstream covers a timestamp and a
// nonce the proxy sets, under the proxy's own domain, so it never verifies
// on a verify route even with identical parts.
func TestExtAuthzSignRouteIsNotAMACOracle(t *testing.T) {
	a := newAuthzEnv(t, hookPolicy)
	before := time.Now().Unix()
	got := a.check(t, a.tcp, envoyRequest("POST", "/internal/jobs", map[string]string{"x-user": "bob"}))
	upMAC, ts, nonce := got.Set["x-proxy-mac"], got.Set["x-keyshift-timestamp"], got.Set["x-keyshift-nonce"]
	want := checkResult{Code: codes.OK, Set: map[string]string{"x-proxy-mac": upMAC, "x-keyshift-timestamp": ts, "x-keyshift-nonce": nonce}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sign route (-want +got):\n%s", diff)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sec < before || sec > time.Now().Unix() {
		t.Errorf("upstream timestamp %q, want now", ts)
	}
	if raw, err := base64.RawURLEncoding.Strict().DecodeString(nonce); err != nil || len(raw) != 16 {
		t.Errorf("upstream nonce %q: want 16 random bytes in unpadded base64url", nonce)
	}
	// The upstream checks it with the documented bytes.
	ver, m, okMAC := parseMAC(upMAC)
	if !okMAC {
		t.Fatalf("upstream MAC %q", upMAC)
	}
	proxyBytes := fmt.Sprintf("keyshift-request-mac-v2/proxy\ntimestamp=%s\nnonce=%s\nmethod=POST\nheader:x-user=bob", ts, nonce)
	if err := a.srv.Service().Verify(ctxT(t), "webhooks", ver, []byte(proxyBytes), m); err != nil {
		t.Errorf("the upstream cannot verify the proxy's MAC: %v", err)
	}

	// Replayed to the verify route with everything it covers.
	replay := envoyRequest("POST", "/hooks/pay", map[string]string{"x-sig": upMAC, "x-user": "bob", "x-keyshift-timestamp": ts, "x-keyshift-nonce": nonce})
	if diff := cmp.Diff(denied(401, "bad_mac"), a.check(t, a.unix, replay)); diff != "" {
		t.Errorf("sign-route MAC on a verify route (-want +got):\n%s", diff)
	}
	// Two calls get two nonces.
	again := a.check(t, a.tcp, envoyRequest("POST", "/internal/jobs", map[string]string{"x-user": "bob"}))
	if again.Set["x-keyshift-nonce"] == nonce {
		t.Errorf("the proxy repeated nonce %q", nonce)
	}
}

// The replay cache is bounded: when full of live nonces it refuses new
// ones (fail closed) rather than forgetting any, and expired ones make room.
func TestExtAuthzNonceCacheBounded(t *testing.T) {
	c := newNonceCache(3)
	now := time.Unix(1_700_000_000, 0)
	exp := now.Add(time.Minute)
	for i, want := range []nonceResult{nonceFresh, nonceFresh, nonceReplayed, nonceFresh, nonceFull} {
		n := []string{"a", "b", "a", "c", "d"}[i]
		if got := c.add("k", n, exp, now); got != want {
			t.Errorf("add %s: %v, want %v", n, got, want)
		}
	}
	if got := c.add("other", "a", exp, now); got != nonceFull {
		t.Errorf("same nonce, other keyset, full cache: %v", got)
	}
	later := exp.Add(time.Second)
	if got := c.add("k", "d", later.Add(time.Minute), later); got != nonceFresh {
		t.Errorf("after expiry: %v, want fresh", got)
	}
	if got := c.add("k", "a", later.Add(time.Minute), later); got != nonceFresh {
		t.Errorf("an expired nonce is forgotten (its timestamp is refused anyway): %v", got)
	}
}

// Through decide, with the clock and the cache in hand: a full cache
// refuses (503, nonce_cache_full) and frees up once the window has passed.
func TestExtAuthzNonceCacheFullFailsClosed(t *testing.T) {
	a := newAuthzEnv(t, noncePolicy)
	p, err := ParsePolicy([]byte(noncePolicy))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rtm := &authzRuntime{now: func() time.Time { return now }, nonces: newNonceCache(1)}
	req := func(nonce string) *authzRequest {
		ts := now.Unix()
		return &authzRequest{method: "PUT", path: "/nonce/x", headers: map[string]string{
			"x-sig":                senderMAC(t, a, ts, nonce, "method=PUT\npath=/nonce/x"),
			"x-keyshift-timestamp": strconv.FormatInt(ts, 10), "x-keyshift-nonce": nonce}}
	}
	decide := func(r *authzRequest) string {
		d := p.decide(context.Background(), a.srv.Service(), rtm, r)
		if d.allowed {
			return "allowed"
		}
		return fmt.Sprint(d.status, " ", d.reason)
	}
	first, second := req("AAAAAAAAAAAAAAAAAAAAAA"), req("BBBBBBBBBBBBBBBBBBBBBB")
	got := []string{decide(first), decide(second), decide(first)}
	now = now.Add(121 * time.Second) // past the 120 s window of both
	second = req("BBBBBBBBBBBBBBBBBBBBBB")
	got = append(got, decide(second))
	want := []string{"allowed", fmt.Sprint(http.StatusServiceUnavailable, " nonce_cache_full"), "401 replayed_nonce", "allowed"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
