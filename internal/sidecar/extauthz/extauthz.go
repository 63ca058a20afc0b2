// Package extauthz is keyshift's Envoy / Istio ext_authz service
// (envoy.service.auth.v3.Authorization): per route, it opens sealed
// cookies and headers into plaintext headers for the upstream, reseals
// values under the newest key version, and signs or verifies request
// MACs, all through the sidecar's keyring behind the small Crypto
// interface. The decision is a pure function of (policy, request, crypto);
// server.go adapts it to Envoy's CheckRequest and CheckResponse.
package extauthz

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/sidecar/cryptoapi"
)

// This file is the ext_authz core: a pure function from (policy, request,
// crypto service) to a decision. The gRPC adapter in extauthz_server.go
// only converts Envoy's CheckRequest into an authzRequest and the decision
// into a CheckResponse.

// Crypto is what the ext_authz core needs from the crypto service.
type Crypto interface {
	Decrypt(ctx context.Context, ciphertext []byte, c map[string]string) (cryptoapi.Opened, error)
	Encrypt(ctx context.Context, keyset string, plaintext []byte, c map[string]string) (cryptoapi.Sealed, error)
	Primary(keyset string) (uint32, error)
	Sign(ctx context.Context, keyset string, data []byte) (uint32, []byte, error)
	Verify(ctx context.Context, keyset string, version uint32, data, mac []byte) error
	// Keysets names the keysets served; a policy may use no other.
	Keysets() []string
	// Ready reports whether every keyset is loaded (the health check).
	Ready() bool
}

// Denial reasons: the x-keyshift-denied header value and the metric label.
// They never carry request data.
const (
	reasonNoRoute        = "no_route"           // no route matched and the default is deny
	reasonRouteDenied    = "route_denied"       // the route says deny
	reasonBadPath        = "bad_path"           // the path cannot be decoded for matching
	reasonMissing        = "missing_ciphertext" // the cookie or header is absent
	reasonBadEncoding    = "bad_encoding"       // not unpadded base64url
	reasonWrongKeyset    = "wrong_keyset"       // a ciphertext of another keyset
	reasonBadPlaintext   = "bad_plaintext"      // the plaintext cannot be a raw header value
	reasonMissingMAC     = "missing_signature"  // the MAC header is absent
	reasonBadMACFormat   = "bad_signature"      // not v<version>.<base64url MAC>
	reasonBadRequestPart = "bad_request"        // a signed part holds CR or LF
	reasonNoTimestamp    = "missing_timestamp"  // a verify route's request has no x-keyshift-timestamp
	reasonBadTimestamp   = "bad_timestamp"      // not unix seconds in decimal
	reasonStale          = "stale_timestamp"    // older than the skew window
	reasonFuture         = "future_timestamp"   // further ahead than the skew window
	reasonNoNonce        = "missing_nonce"      // the route requires a nonce
	reasonBadNonce       = "bad_nonce"          // not 16 to 128 base64url characters
	reasonReplayed       = "replayed_nonce"     // the nonce was seen within the window
	reasonNonceFull      = "nonce_cache_full"   // too many live nonces to remember another (503)
	// Service errors keep their cryptoapi.Reason() label: auth_failed, malformed,
	// unsupported_format, unknown_version, revoked, bad_mac, not_ready,
	// internal…
)

// denyHeader names the reason on every denial.
const denyHeader = "x-keyshift-denied"

// The domains start every canonical request, so a request MAC can never
// be confused with a MAC over anything else made with the same key, nor one
// direction with the other: verify routes check MACs the request's sender
// made (macDomainSender); sign routes make MACs for the upstream
// (macDomainProxy), which therefore never verify on a verify route. (v1
// covered no timestamp; its MACs are no longer accepted.)
const (
	macDomainSender = "keyshift-request-mac-v2/sender"
	macDomainProxy  = "keyshift-request-mac-v2/proxy"
)

// PurposeKey and PurposeToken are the encryption context
// entry every ciphertext opened by an ext_authz decrypt rule must be sealed
// with, in addition to the rule's own context. An app mints a token with
// Encrypt(keyset, plaintext, {PurposeKey: PurposeToken,
// ...the rule's context}). Ciphertexts sealed for anything else (the app's
// stored data, the canary in every keyset document) then never pass as
// tokens, and their plaintexts never reach a header.
const (
	PurposeKey   = "keyshift.io/purpose"
	PurposeToken = "ext-authz-token"
)

// TimestampHeader and NonceHeader carry the timestamp
// (unix seconds in decimal) and nonce every request MAC covers: sent by
// the client on verify routes, set by the sidecar on sign routes.
const (
	TimestampHeader = "x-keyshift-timestamp"
	NonceHeader     = "x-keyshift-nonce"
)

// tokenContext is the context a decrypt rule opens and reseals with.
func tokenContext(rule map[string]string) map[string]string {
	c := make(map[string]string, len(rule)+1)
	for k, v := range rule {
		c[k] = v
	}
	c[PurposeKey] = PurposeToken
	return c
}

const (
	// maxTokenLen bounds an encoded ciphertext or MAC read from a request.
	maxTokenLen = 16 << 10
	// maxCookieTries bounds how many same-named cookies one rule tries
	// (browsers send several when paths or domains differ).
	maxCookieTries = 4
	// defaultSkewSeconds and maxSkewSeconds bound a request MAC's
	// timestamp around the sidecar's clock.
	defaultSkewSeconds = 300
	maxSkewSeconds     = 3600
	// minNonceLen and maxNonceLen bound a nonce (16 characters are 96 bits).
	minNonceLen = 16
	maxNonceLen = 128
	// maxNonces bounds the replay cache of one ext_authz server.
	maxNonces = 100_000
)

// authzRuntime is what decisions share besides the policy: the clock and
// the nonces seen. One per server; safe for concurrent use.
type authzRuntime struct {
	now    func() time.Time
	nonces *nonceCache
}

func newAuthzRuntime() *authzRuntime {
	return &authzRuntime{now: time.Now, nonces: newNonceCache(maxNonces)}
}

// authzRequest is the part of Envoy's CheckRequest the policy reads.
type authzRequest struct {
	method    string
	path      string // as sent: may hold a query string
	authority string
	headers   map[string]string // lowercase names; cookies in one "cookie"
	id        string            // Envoy's request ID, for logs
}

// headerKV is one header to write. Its value may be a plaintext: it is
// never logged.
type headerKV struct {
	name, value string
}

// authzDecision is what the core decided. It holds plaintexts (upstream
// headers) and logs and prints without header values.
type authzDecision struct {
	allowed bool
	status  int    // HTTP status of a denial
	reason  string // denial reason, "" when allowed
	route   string // the matched prefix, "" when none
	// upstream headers are set (overwriting) on the request; remove are
	// deleted from it; downstream headers are added to the client's
	// response (Set-Cookie among them).
	upstream   []headerKV
	remove     []string
	downstream []headerKV
	// opened lists "keyset/vN" for each ciphertext opened; resealed counts
	// values sent back under the primary; resealErrs counts reseal failures
	// (the request is still allowed).
	opened     []string
	resealed   int
	resealErrs int
}

// LogValue never shows header values.
func (d authzDecision) LogValue() slog.Value {
	names := func(hs []headerKV) []string {
		out := make([]string, len(hs))
		for i, h := range hs {
			out[i] = h.name
		}
		return out
	}
	return slog.GroupValue(slog.Bool("allowed", d.allowed), slog.Int("status", d.status), slog.String("reason", d.reason),
		slog.String("route", d.route), slog.Any("set", names(d.upstream)), slog.Any("removed", d.remove),
		slog.Any("response_headers", names(d.downstream)), slog.Any("opened", d.opened), slog.Int("resealed", d.resealed))
}

// String never shows header values.
func (d authzDecision) String() string { return d.LogValue().String() }

func deny(route string, status int, reason string) authzDecision {
	return authzDecision{status: status, reason: reason, route: route}
}

// denyErr turns a service error into a denial: crypto failures are the
// client's (401), an unloaded keyring is ours and temporary (503).
func denyErr(route string, err error) authzDecision {
	r := cryptoapi.Reason(err)
	switch r {
	case "not_ready", "canceled":
		return deny(route, http.StatusServiceUnavailable, r)
	case "unknown_keyset", "keyset_required", "internal", "batch_too_large", "permission_denied":
		return deny(route, http.StatusInternalServerError, "internal")
	}
	return deny(route, http.StatusUnauthorized, r)
}

// decide applies the policy to one request. It is pure apart from the calls
// into the crypto service, the clock and the nonce cache, and safe for
// concurrent use.
func (p *Policy) decide(ctx context.Context, c Crypto, rtm *authzRuntime, r *authzRequest) authzDecision {
	if len(p.byLength) == 0 && p.Default == "allow" {
		return authzDecision{allowed: true}
	}
	rawPath, query, _ := strings.Cut(r.path, "?")
	query, _, _ = strings.Cut(query, "#")
	mp, ok := matchPath(rawPath)
	if !ok {
		return deny("", http.StatusBadRequest, reasonBadPath)
	}
	rt := p.match(mp)
	switch {
	case rt == nil && p.Default == "allow":
		return authzDecision{allowed: true, remove: p.strip}
	case rt == nil:
		return deny("", http.StatusForbidden, reasonNoRoute)
	case rt.Deny:
		return deny(rt.Prefix, http.StatusForbidden, reasonRouteDenied)
	case rt.Allow:
		return authzDecision{allowed: true, route: rt.Prefix, remove: p.strip}
	}
	d := authzDecision{allowed: true, route: rt.Prefix}
	parts := requestParts{method: r.method, path: rawPath, query: query, authority: r.authority}

	if v := rt.Verify; v != nil {
		if denied, ok := verifyMAC(ctx, c, rtm, rt.Prefix, v, parts, func(h string) string { return r.headers[h] }); !ok {
			return denied
		}
	}

	var cookies []cookiePair
	consumed := map[string]bool{}
	if len(rt.Decrypt) > 0 {
		cookies = parseCookies(r.headers["cookie"])
	}
	for i := range rt.Decrypt {
		rule := &rt.Decrypt[i]
		var values []string
		if rule.Cookie != "" {
			for _, ck := range cookies {
				if ck.name == rule.Cookie && ck.value != "" && len(values) < maxCookieTries {
					values = append(values, ck.value)
				}
			}
		} else if v := r.headers[rule.Header]; v != "" {
			values = append(values, v)
		}
		if len(values) == 0 {
			if rule.Optional {
				d.remove = append(d.remove, rule.ToHeader)
				continue
			}
			return deny(rt.Prefix, http.StatusUnauthorized, reasonMissing)
		}
		opened, fail := openFirst(ctx, c, rt.Prefix, rule, values)
		if fail != nil {
			return *fail
		}
		value, ok := headerValue(opened.Plaintext, rule.ToEncoding)
		if !ok {
			clear(opened.Plaintext)
			return deny(rt.Prefix, http.StatusInternalServerError, reasonBadPlaintext)
		}
		d.upstream = append(d.upstream, headerKV{rule.ToHeader, value})
		d.opened = append(d.opened, fmt.Sprintf("%s/v%d", opened.Keyset, opened.Version))
		if rule.Cookie != "" {
			consumed[rule.Cookie] = true
		} else {
			d.remove = append(d.remove, rule.Header)
		}
		if rule.Reseal != nil {
			d.reseal(ctx, c, rule, opened)
		}
		clear(opened.Plaintext)
	}
	if len(consumed) > 0 {
		if rest := joinCookies(cookies, consumed); rest != "" {
			d.upstream = append(d.upstream, headerKV{"cookie", rest})
		} else {
			d.remove = append(d.remove, "cookie")
		}
	}

	if s := rt.Sign; s != nil {
		ts := strconv.FormatInt(rtm.now().Unix(), 10)
		var n [16]byte
		rand.Read(n[:]) // never fails
		nonce := base64.RawURLEncoding.EncodeToString(n[:])
		data, ok := canonicalRequest(macDomainProxy, ts, nonce, s.Parts, parts, d.upstreamHeader(r.headers, p.strip))
		if !ok {
			return deny(rt.Prefix, http.StatusBadRequest, reasonBadRequestPart)
		}
		version, mac, err := c.Sign(ctx, s.Keyset, data)
		if err != nil {
			return denyErr(rt.Prefix, err)
		}
		d.upstream = append(d.upstream, headerKV{TimestampHeader, ts}, headerKV{NonceHeader, nonce},
			headerKV{s.Header, formatMAC(version, mac)})
	}
	d.stripWritten(p.strip)
	return d
}

// stripWritten removes from the upstream request every header of strip
// (those any rule of the policy writes) that this decision does not set.
func (d *authzDecision) stripWritten(strip []string) {
	for _, h := range strip {
		if !slices.ContainsFunc(d.upstream, func(kv headerKV) bool { return kv.name == h }) && !slices.Contains(d.remove, h) {
			d.remove = append(d.remove, h)
		}
	}
}

// openFirst decrypts the first value that opens under the rule's keyset.
// Several values only come from same-named cookies; the first failure is
// the one reported.
func openFirst(ctx context.Context, c Crypto, route string, rule *DecryptRule, values []string) (cryptoapi.Opened, *authzDecision) {
	var first *authzDecision
	fail := func(d authzDecision) {
		if first == nil {
			first = &d
		}
	}
	for _, v := range values {
		if len(v) > maxTokenLen {
			fail(deny(route, http.StatusUnauthorized, "too_large"))
			continue
		}
		ct, err := decodeToken(v)
		if err != nil {
			fail(deny(route, http.StatusUnauthorized, reasonBadEncoding))
			continue
		}
		h, _, err := envelope.Parse(ct)
		if err != nil {
			fail(denyErr(route, err))
			continue
		}
		if h.Keyset != rule.Keyset {
			fail(deny(route, http.StatusUnauthorized, reasonWrongKeyset))
			continue
		}
		if rule.tokenContext == nil {
			// Not validated: never open without the purpose.
			fail(deny(route, http.StatusInternalServerError, "internal"))
			continue
		}
		opened, err := c.Decrypt(ctx, ct, rule.tokenContext)
		if err != nil {
			fail(denyErr(route, err))
			continue
		}
		return opened, nil
	}
	return cryptoapi.Opened{}, first
}

// reseal seals the plaintext again under the primary when it was opened
// under an older version and queues the value for the client. A failure
// here does not deny: the request itself was valid.
func (d *authzDecision) reseal(ctx context.Context, c Crypto, rule *DecryptRule, opened cryptoapi.Opened) {
	primary, err := c.Primary(opened.Keyset)
	if err != nil {
		d.resealErrs++
		return
	}
	if primary == opened.Version {
		return
	}
	sealed, err := c.Encrypt(ctx, opened.Keyset, opened.Plaintext, rule.tokenContext)
	if err != nil {
		d.resealErrs++
		return
	}
	value := base64.RawURLEncoding.EncodeToString(sealed.Ciphertext)
	if rule.Reseal.Cookie != nil {
		d.downstream = append(d.downstream, headerKV{"set-cookie", rule.Reseal.Cookie.cookie(rule.Cookie, value).String()})
	} else {
		d.downstream = append(d.downstream, headerKV{rule.Reseal.Header, value})
	}
	d.resealed++
}

// upstreamHeader reads a header as the upstream will receive it, after this
// decision's changes (strip included), so a sign rule can cover a decrypted
// header and never covers a client's value the upstream will not see.
func (d *authzDecision) upstreamHeader(orig map[string]string, strip []string) func(string) string {
	return func(name string) string {
		for i := len(d.upstream) - 1; i >= 0; i-- {
			if d.upstream[i].name == name {
				return d.upstream[i].value
			}
		}
		if slices.Contains(d.remove, name) || slices.Contains(strip, name) {
			return ""
		}
		return orig[name]
	}
}

// verifyMAC checks the request MAC of rule v, its timestamp against the
// skew window and, when the rule requires one, that its nonce is fresh. The
// nonce is recorded only once the MAC verifies, so forged requests cannot
// use up a sender's nonces.
func verifyMAC(ctx context.Context, c Crypto, rtm *authzRuntime, route string, v *MACRule, parts requestParts, header func(string) string) (authzDecision, bool) {
	sig := header(v.Header)
	if sig == "" {
		return deny(route, http.StatusUnauthorized, reasonMissingMAC), false
	}
	version, mac, ok := parseMAC(sig)
	if !ok {
		return deny(route, http.StatusUnauthorized, reasonBadMACFormat), false
	}
	tsText := header(TimestampHeader)
	if tsText == "" {
		return deny(route, http.StatusUnauthorized, reasonNoTimestamp), false
	}
	ts, ok := parseUnixSeconds(tsText)
	if !ok {
		return deny(route, http.StatusUnauthorized, reasonBadTimestamp), false
	}
	now, skew := rtm.now(), v.skew()
	switch {
	case ts < now.Unix()-skew:
		return deny(route, http.StatusUnauthorized, reasonStale), false
	case ts > now.Unix()+skew:
		return deny(route, http.StatusUnauthorized, reasonFuture), false
	}
	nonce := header(NonceHeader)
	switch {
	case nonce == "" && v.RequireNonce:
		return deny(route, http.StatusUnauthorized, reasonNoNonce), false
	case nonce != "" && !validNonce(nonce):
		return deny(route, http.StatusUnauthorized, reasonBadNonce), false
	}
	data, ok := canonicalRequest(macDomainSender, tsText, nonce, v.Parts, parts, header)
	if !ok {
		return deny(route, http.StatusBadRequest, reasonBadRequestPart), false
	}
	if err := c.Verify(ctx, v.Keyset, version, data, mac); err != nil {
		return denyErr(route, err), false
	}
	if v.RequireNonce {
		// Remembered while its timestamp is still acceptable; after that
		// the timestamp check refuses a replay by itself.
		switch rtm.nonces.add(v.Keyset, nonce, time.Unix(ts+skew+1, 0), now) {
		case nonceReplayed:
			return deny(route, http.StatusUnauthorized, reasonReplayed), false
		case nonceFull:
			return deny(route, http.StatusServiceUnavailable, reasonNonceFull), false
		}
	}
	return authzDecision{}, true
}

// skew is the rule's timestamp window in seconds.
func (m *MACRule) skew() int64 {
	if m.MaxSkewSeconds > 0 {
		return int64(m.MaxSkewSeconds)
	}
	return defaultSkewSeconds
}

// parseUnixSeconds reads 1 to 12 decimal digits, no sign or blanks.
func parseUnixSeconds(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 12 {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// validNonce reports whether s is 16 to 128 characters of the base64url
// alphabet (header- and log-safe; 16 random characters are 96 bits).
func validNonce(s string) bool {
	if len(s) < minNonceLen || len(s) > maxNonceLen {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// requestParts are the pseudo-header parts a MAC may cover.
type requestParts struct {
	method, path, query, authority string
}

// canonicalRequest is the byte string a request MAC covers:
//
//	<domain>
//	timestamp=<x-keyshift-timestamp as sent>
//	nonce=<x-keyshift-nonce as sent, "" when absent>
//	<part>=<value>
//	…
//
// the domain being keyshift-request-mac-v2/sender on verify routes and
// keyshift-request-mac-v2/proxy on sign routes, then one line per listed
// part, in the policy's order, joined by "\n" with no trailing newline.
// Values are as Envoy reports them: "path" is the path without the query
// string, "query" the raw query after "?", "authority" the :authority
// (Host), "header:<name>" the header's value (several values joined by
// ","; "" when absent). A value holding CR or LF makes the request
// unsignable (ok false): HTTP forbids them, so it is an attack.
func canonicalRequest(domain, timestamp, nonce string, list []string, p requestParts, header func(string) string) ([]byte, bool) {
	if strings.ContainsAny(timestamp, "\r\n") || strings.ContainsAny(nonce, "\r\n") {
		return nil, false
	}
	n := len(domain) + len("\ntimestamp=") + len(timestamp) + len("\nnonce=") + len(nonce)
	values := make([]string, len(list))
	for i, part := range list {
		switch part {
		case "method":
			values[i] = p.method
		case "path":
			values[i] = p.path
		case "query":
			values[i] = p.query
		case "authority":
			values[i] = p.authority
		default:
			values[i] = header(strings.TrimPrefix(part, "header:"))
		}
		if strings.ContainsAny(values[i], "\r\n") {
			return nil, false
		}
		n += 1 + len(part) + 1 + len(values[i])
	}
	out := make([]byte, 0, n)
	out = append(out, domain...)
	out = append(out, "\ntimestamp="...)
	out = append(out, timestamp...)
	out = append(out, "\nnonce="...)
	out = append(out, nonce...)
	for i, part := range list {
		out = append(out, '\n')
		out = append(out, part...)
		out = append(out, '=')
		out = append(out, values[i]...)
	}
	return out, true
}

// formatMAC renders a MAC as it travels: "v<version>.<unpadded base64url>".
func formatMAC(version uint32, mac []byte) string {
	return "v" + strconv.FormatUint(uint64(version), 10) + "." + base64.RawURLEncoding.EncodeToString(mac)
}

// parseMAC reads "v<version>.<unpadded base64url>".
func parseMAC(s string) (uint32, []byte, bool) {
	if len(s) > maxTokenLen || !strings.HasPrefix(s, "v") {
		return 0, nil, false
	}
	vs, ms, ok := strings.Cut(s[1:], ".")
	if !ok || vs == "" || vs[0] == '0' || len(vs) > 10 {
		return 0, nil, false
	}
	v, err := strconv.ParseUint(vs, 10, 32)
	if err != nil {
		return 0, nil, false
	}
	mac, err := base64.RawURLEncoding.Strict().DecodeString(ms)
	if err != nil || len(mac) == 0 {
		return 0, nil, false
	}
	return uint32(v), mac, true
}

// decodeToken reads a ciphertext sent as unpadded base64url, tolerating
// "=" padding and the double quotes RFC 6265 allows around a cookie value.
func decodeToken(v string) ([]byte, error) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return base64.RawURLEncoding.Strict().DecodeString(strings.TrimRight(v, "="))
}

// headerValue renders a plaintext for an upstream header. "raw" needs
// printable ASCII without surrounding blanks (proxies would trim or reject
// anything else); "base64url" takes any bytes.
func headerValue(pt []byte, encoding string) (string, bool) {
	if encoding == "base64url" {
		return base64.RawURLEncoding.EncodeToString(pt), len(pt) > 0
	}
	if len(pt) == 0 || pt[0] == ' ' || pt[0] == '\t' || pt[len(pt)-1] == ' ' || pt[len(pt)-1] == '\t' {
		return "", false
	}
	for _, b := range pt {
		if (b < 0x20 && b != '\t') || b > 0x7e {
			return "", false
		}
	}
	return string(pt), true
}

// matchPath is the path routes are matched against: percent-decoded once,
// dot segments and repeated slashes resolved, so "/a/%2e%2e/admin" and
// "//admin" meet the rules of "/admin". The path must be origin-form, and
// one that servers read in different ways is refused (ok false): with ";"
// (a segment parameter to Tomcat, Jetty and Spring, so "/healthz/..;/admin"
// is their "/admin"), "\" (a separator to some), a "%" left after
// decoding (double encoding), or a control character.
func matchPath(p string) (string, bool) {
	if p == "" || p[0] != '/' {
		return "", false
	}
	if strings.IndexByte(p, '%') >= 0 {
		u, err := url.PathUnescape(p)
		if err != nil || strings.IndexByte(u, '%') >= 0 {
			return "", false
		}
		p = u
	}
	for _, c := range []byte(p) {
		if c == ';' || c == '\\' || c < 0x20 || c == 0x7f {
			return "", false
		}
	}
	return cleanPath(p), true
}

// cookiePair is one name=value of a Cookie header; raw keeps the original
// text so cookies the policy does not consume reach the upstream unchanged.
type cookiePair struct {
	name, value, raw string
}

func parseCookies(h string) []cookiePair {
	var out []cookiePair
	for part := range strings.SplitSeq(h, ";") {
		raw := strings.TrimSpace(part)
		if raw == "" {
			continue
		}
		name, value, _ := strings.Cut(raw, "=")
		out = append(out, cookiePair{name: strings.TrimSpace(name), value: strings.TrimSpace(value), raw: raw})
	}
	return out
}

// joinCookies rebuilds the Cookie header without the consumed names.
func joinCookies(cookies []cookiePair, consumed map[string]bool) string {
	var b strings.Builder
	for _, ck := range cookies {
		if consumed[ck.name] {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(ck.raw)
	}
	return b.String()
}
