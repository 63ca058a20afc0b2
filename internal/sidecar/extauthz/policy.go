package extauthz

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/keyshift/keyshift/internal/envelope"
)

// ErrPolicy wraps every reason an ext_authz policy file is refused.
var ErrPolicy = errors.New("extauthz: invalid policy")

// Policy limits: a policy is a small hand-written file, so anything larger
// is a mistake, not a use case.
const (
	maxPolicyBytes  = 1 << 20
	maxPolicyRoutes = 1000
	maxRouteRules   = 16
	maxMACParts     = 32
)

// Policy says, per route prefix, what the Envoy ext_authz service
// checks and rewrites. It is loaded once (LoadPolicy or
// ParsePolicy) and validated strictly; it must not be modified
// afterwards, so one value is shared by every concurrent Check.
//
// The file is YAML or JSON (JSON is YAML); unknown fields are errors. The
// route with the longest prefix matching the request path applies (see
// Route.Prefix); a request no route matches gets Default: "deny"
// (403, reason no_route) or "allow" (passed on). Both are deliberate
// choices, so Default has no default.
//
// The path is matched without its query string, percent-decoded once, with
// "." and ".." segments and repeated slashes resolved. A path the sidecar
// and the upstream might read differently is refused (400, reason
// bad_path) whatever the routes say: one holding ";" (Tomcat, Jetty and
// Spring drop ";params" from a segment, so "/healthz/..;/admin/" is their
// "/admin/"), "\" (a separator to some servers), a "%" still there after
// decoding (double encoding), or a control character.
//
// Every allowed request, whichever route or the default allowed it, loses
// the upstream headers that any rule of the policy can write (decrypt
// to_header, sign header, and x-keyshift-timestamp / x-keyshift-nonce when
// a route signs) unless this decision sets them: a client can never supply
// a header the upstream trusts because the policy writes it elsewhere.
type Policy struct {
	// Default is "deny" or "allow": what happens to a request no route matches.
	Default string `json:"default"`
	// Routes are the per-prefix rules, in any order.
	Routes []Route `json:"routes"`

	byLength []*Route // Routes, longest prefix first
	strip    []string // upstream headers any rule writes, sorted
}

// Route is the rule set for one path prefix. Exactly one of Allow,
// Deny or a non-empty combination of Verify, Decrypt and Sign is set. The
// steps run in that order: verify the incoming MAC, decrypt the ciphertexts,
// then sign the request as it will reach the upstream.
type Route struct {
	// Prefix is a path prefix starting with "/", matched on whole path
	// segments and case-sensitively (as Envoy and most servers compare
	// paths): "/api" matches "/api", "/api/" and "/api/v1" but not "/apiv2"
	// or "/API". A trailing "/" makes no difference ("/api/" also matches
	// "/api"), and "/" matches every path.
	Prefix string `json:"prefix"`
	// Allow passes matching requests through unchanged.
	Allow bool `json:"allow,omitempty"`
	// Deny refuses matching requests with 403 (reason route_denied).
	Deny bool `json:"deny,omitempty"`
	// Verify checks a request MAC made with a keyset's MAC key.
	Verify *MACRule `json:"verify,omitempty"`
	// Decrypt opens keyshift ciphertexts carried in headers or cookies.
	Decrypt []DecryptRule `json:"decrypt,omitempty"`
	// Sign adds a MAC over the request (after decryption) for the upstream
	// to check, so it can tell requests that passed the proxy from others.
	Sign *MACRule `json:"sign,omitempty"`
}

// DecryptRule names one ciphertext to open. The value is a keyshift
// ciphertext in unpadded base64url (RFC 4648 §5, cookie- and header-safe);
// trailing "=" padding and surrounding cookie quotes are tolerated.
type DecryptRule struct {
	// Keyset is the only keyset whose ciphertexts this rule accepts.
	Keyset string `json:"keyset"`
	// Cookie names the cookie holding the ciphertext (exclusive with
	// Header). The cookie is removed before the request goes upstream.
	Cookie string `json:"cookie,omitempty"`
	// Header names the request header holding the ciphertext (exclusive
	// with Cookie). The header is removed before the request goes upstream.
	Header string `json:"header,omitempty"`
	// ToHeader receives the plaintext upstream; a client-sent value of the
	// same header is always overwritten or removed.
	ToHeader string `json:"to_header"`
	// ToEncoding is how the plaintext is written into ToHeader: "raw"
	// (default; the plaintext must be printable ASCII) or "base64url".
	ToEncoding string `json:"to_encoding,omitempty"`
	// Context is the encryption context the application sealed with,
	// besides the reserved PurposeKey entry every token carries
	// (which the rule must not name): a ciphertext sealed without that
	// entry, such as the app's own data or a keyset's canary, never opens.
	Context map[string]string `json:"context,omitempty"`
	// Optional lets a request without the ciphertext through (ToHeader is
	// then removed); a present but bad ciphertext is still denied.
	Optional bool `json:"optional,omitempty"`
	// Reseal, when set, sends the value resealed under the primary version
	// back to the client whenever it was sealed under an older one.
	Reseal *Reseal `json:"reseal,omitempty"`

	tokenContext map[string]string // Context plus the purpose, set by validate
}

// Reseal says how a resealed value travels back downstream: in a
// response header, or (cookie sources only) as a Set-Cookie of the same
// cookie. Exactly one is set.
type Reseal struct {
	// Header is a response header that carries the resealed value.
	Header string `json:"header,omitempty"`
	// Cookie holds the attributes of the Set-Cookie ({} for the defaults).
	Cookie *Cookie `json:"cookie,omitempty"`
}

// Cookie are the attributes of a resealed cookie. The defaults are
// the safe ones: Path "/", Secure, HttpOnly, SameSite=Lax, a session cookie.
type Cookie struct {
	// Path defaults to "/".
	Path string `json:"path,omitempty"`
	// Domain is omitted when empty (host-only cookie).
	Domain string `json:"domain,omitempty"`
	// MaxAgeSeconds > 0 sets Max-Age; 0 makes a session cookie.
	MaxAgeSeconds int `json:"max_age_seconds,omitempty"`
	// Secure defaults to true.
	Secure *bool `json:"secure,omitempty"`
	// HTTPOnly defaults to true.
	HTTPOnly *bool `json:"http_only,omitempty"`
	// SameSite is "lax" (default), "strict" or "none".
	SameSite string `json:"same_site,omitempty"`
}

// MACRule is a request MAC rule (see canonicalRequest for the exact
// bytes). The MAC travels as "v<version>.<unpadded base64url HMAC>", so a
// verifier picks the version it was made with; every loaded version of
// Keyset verifies, so MACs made before a rotation stay valid through the
// retention window.
//
// Every MAC covers a timestamp (unix seconds, in x-keyshift-timestamp) and
// a nonce (x-keyshift-nonce, empty when absent). A verify rule refuses a
// timestamp more than MaxSkewSeconds away from its clock, and with
// RequireNonce a nonce seen within that window. A sign rule sets both
// headers itself. The two directions sign under different domains, so a MAC
// the proxy adds for the upstream never verifies on a verify route.
type MACRule struct {
	// Keyset is the keyset whose MAC keys are used.
	Keyset string `json:"keyset"`
	// Header holds the MAC: read from the request for verify, set on the
	// upstream request for sign.
	Header string `json:"header"`
	// Parts are the request parts covered, in order: "method", "path"
	// (without query), "query", "authority", "header:<name>". The
	// timestamp and nonce are always covered and are not listed.
	Parts []string `json:"parts"`
	// MaxSkewSeconds (verify only) bounds how far the request's timestamp
	// may be from the sidecar's clock, either way: 1 to 3600, default 300.
	MaxSkewSeconds int `json:"max_skew_seconds,omitempty"`
	// RequireNonce (verify only) makes every request carry a nonce (16 to
	// 128 characters of unpadded base64url) and refuses one already seen
	// within the skew window (reason replayed_nonce). The sidecar remembers
	// at most 100,000 nonces at once; past that it refuses such requests
	// (503, nonce_cache_full) until some expire, rather than forget one.
	RequireNonce bool `json:"require_nonce,omitempty"`
}

// LoadPolicy reads and validates a policy file (YAML or JSON).
func LoadPolicy(file string) (*Policy, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrPolicy, file, err)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return p, nil
}

// ParsePolicy parses and validates a policy document (YAML or JSON).
func ParsePolicy(data []byte) (*Policy, error) {
	if len(data) > maxPolicyBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrPolicy, maxPolicyBytes)
	}
	var p Policy
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// AllowAll is the no-op policy: every request passes
// untouched. It is the baseline the Check benchmark compares against.
func AllowAll() *Policy {
	p := &Policy{Default: "allow"}
	if err := p.validate(); err != nil {
		panic(err)
	}
	return p
}

// Keysets lists the keysets the policy uses, sorted, so the server can
// refuse to start on a keyset the sidecar does not serve.
func (p *Policy) Keysets() []string {
	var out []string
	for _, r := range p.Routes {
		if r.Verify != nil {
			out = append(out, r.Verify.Keyset)
		}
		if r.Sign != nil {
			out = append(out, r.Sign.Keyset)
		}
		for _, d := range r.Decrypt {
			out = append(out, d.Keyset)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

func policyErr(where, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrPolicy, where, fmt.Sprintf(format, args...))
}

func (p *Policy) validate() error {
	switch p.Default {
	case "deny", "allow":
	case "":
		return policyErr("default", `missing; write "deny" (refuse requests no route matches) or "allow"`)
	default:
		return policyErr("default", `%q is neither "deny" nor "allow"`, p.Default)
	}
	if len(p.Routes) > maxPolicyRoutes {
		return policyErr("routes", "%d routes exceeds %d", len(p.Routes), maxPolicyRoutes)
	}
	seen := map[string]int{}
	var strip []string
	for i := range p.Routes {
		r := &p.Routes[i]
		where := fmt.Sprintf("routes[%d]", i)
		if err := validatePrefix(r.Prefix); err != nil {
			return policyErr(where+".prefix", "%v", err)
		}
		if j, dup := seen[segmentPrefix(r.Prefix)]; dup {
			if p.Routes[j].Prefix == r.Prefix {
				return policyErr(where+".prefix", "%q repeats routes[%d]; merge them", r.Prefix, j)
			}
			return policyErr(where+".prefix", "%q and routes[%d]'s %q match the same paths (prefixes match whole segments); merge them",
				r.Prefix, j, p.Routes[j].Prefix)
		}
		seen[segmentPrefix(r.Prefix)] = i
		if err := r.validate(where); err != nil {
			return err
		}
		strip = append(strip, r.writes()...)
	}
	p.byLength = make([]*Route, len(p.Routes))
	for i := range p.Routes {
		p.byLength[i] = &p.Routes[i]
	}
	sort.SliceStable(p.byLength, func(i, j int) bool {
		return len(segmentPrefix(p.byLength[i].Prefix)) > len(segmentPrefix(p.byLength[j].Prefix))
	})
	sort.Strings(strip)
	p.strip = slices.Clip(slices.Compact(strip))
	return nil
}

// writes lists the upstream request headers the route's rules can set.
func (r *Route) writes() []string {
	var out []string
	for _, d := range r.Decrypt {
		out = append(out, d.ToHeader)
	}
	if r.Sign != nil {
		out = append(out, r.Sign.Header, TimestampHeader, NonceHeader)
	}
	return out
}

// segmentPrefix is the prefix as matched: without its trailing "/", so
// "/api/" and "/api" both cover "/api" and "/api/..." ("/" becomes "",
// which covers every path).
func segmentPrefix(prefix string) string {
	return strings.TrimSuffix(prefix, "/")
}

func validatePrefix(prefix string) error {
	if prefix == "" {
		return errors.New(`missing; write a path prefix such as "/api/"`)
	}
	if prefix[0] != '/' {
		return fmt.Errorf(`%q does not start with "/"`, prefix)
	}
	for _, c := range []byte(prefix) {
		if c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%q holds a space, control or non-ASCII byte", prefix)
		}
	}
	if strings.ContainsAny(prefix, "?#%") {
		return fmt.Errorf(`%q holds "?", "#" or "%%"; write the decoded path only (the query string is never matched)`, prefix)
	}
	if clean := cleanPath(prefix); clean != prefix {
		return fmt.Errorf("%q is not a clean path; write %q", prefix, clean)
	}
	return nil
}

// cleanPath resolves dot segments and repeated slashes, keeping a trailing
// slash.
func cleanPath(p string) string {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

func (r *Route) validate(where string) error {
	rules := 0
	if r.Verify != nil {
		rules++
	}
	if r.Sign != nil {
		rules++
	}
	rules += len(r.Decrypt)
	switch {
	case r.Allow && r.Deny:
		return policyErr(where, `"allow" and "deny" are exclusive; keep one`)
	case (r.Allow || r.Deny) && rules > 0:
		return policyErr(where, `"allow"/"deny" cannot be combined with verify, decrypt or sign; drop one`)
	case !r.Allow && !r.Deny && rules == 0:
		return policyErr(where, `no rule; set "allow": true, "deny": true, or at least one of verify, decrypt, sign`)
	case len(r.Decrypt) > maxRouteRules:
		return policyErr(where+".decrypt", "%d entries exceeds %d", len(r.Decrypt), maxRouteRules)
	}
	// Headers this route writes upstream or downstream must not collide.
	written := map[string]string{}
	claim := func(field, h string) error {
		if prev, ok := written[h]; ok {
			return policyErr(field, "header %q is also written by %s; pick another name", h, prev)
		}
		written[h] = field
		return nil
	}
	if r.Verify != nil {
		if err := r.Verify.validate(where+".verify", true); err != nil {
			return err
		}
	}
	cookies := map[string]string{}
	for i := range r.Decrypt {
		d := &r.Decrypt[i]
		field := fmt.Sprintf("%s.decrypt[%d]", where, i)
		if err := d.validate(field); err != nil {
			return err
		}
		if err := claim(field+".to_header", d.ToHeader); err != nil {
			return err
		}
		if d.Cookie != "" {
			if prev, ok := cookies[d.Cookie]; ok {
				return policyErr(field+".cookie", "cookie %q is also read by %s", d.Cookie, prev)
			}
			cookies[d.Cookie] = field
		} else if err := claim(field+".header", d.Header); err != nil {
			return err
		}
		if d.Reseal != nil && d.Reseal.Header != "" {
			if err := claim(field+".reseal.header", "response:"+d.Reseal.Header); err != nil {
				return err
			}
		}
	}
	if r.Sign != nil {
		if err := r.Sign.validate(where+".sign", false); err != nil {
			return err
		}
		if err := claim(where+".sign.header", r.Sign.Header); err != nil {
			return err
		}
	}
	return nil
}

func (d *DecryptRule) validate(where string) error {
	if err := validateKeysetName(where+".keyset", d.Keyset); err != nil {
		return err
	}
	switch {
	case d.Cookie == "" && d.Header == "":
		return policyErr(where, `no source; set "cookie" or "header" to where the ciphertext is`)
	case d.Cookie != "" && d.Header != "":
		return policyErr(where, `"cookie" and "header" are exclusive; set one`)
	case d.Cookie != "":
		if !isToken(d.Cookie) {
			return policyErr(where+".cookie", "%q is not a valid cookie name (RFC 6265 token)", d.Cookie)
		}
	default:
		if err := validateHeaderName(where+".header", d.Header, false); err != nil {
			return err
		}
	}
	if d.ToHeader == "" {
		return policyErr(where+".to_header", "missing; name the upstream header that receives the plaintext")
	}
	if err := validateHeaderName(where+".to_header", d.ToHeader, true); err != nil {
		return err
	}
	if d.ToHeader == d.Header {
		return policyErr(where+".to_header", "is the source header %q; use another name so the ciphertext and plaintext never mix", d.Header)
	}
	switch d.ToEncoding {
	case "", "raw", "base64url":
	default:
		return policyErr(where+".to_encoding", `%q is neither "raw" nor "base64url"`, d.ToEncoding)
	}
	if _, ok := d.Context[PurposeKey]; ok {
		return policyErr(where+".context", "%q is reserved: the sidecar requires %q=%q on every token itself; drop the entry",
			PurposeKey, PurposeKey, PurposeToken)
	}
	d.tokenContext = tokenContext(d.Context)
	if _, err := envelope.CanonicalContext(d.tokenContext); err != nil {
		return policyErr(where+".context", "%v", err)
	}
	if d.tokenContext[PurposeKey] != PurposeToken {
		// Unreachable: a rule that opened context-free ciphertexts would
		// accept canaries and the app's own data as tokens.
		return policyErr(where+".context", "would accept ciphertexts sealed without the ext_authz purpose")
	}
	if d.Reseal != nil {
		if err := d.Reseal.validate(where+".reseal", d.Cookie != ""); err != nil {
			return err
		}
	}
	return nil
}

func (r *Reseal) validate(where string, fromCookie bool) error {
	switch {
	case r.Header == "" && r.Cookie == nil:
		return policyErr(where, `empty; set "header" (a response header name) or "cookie": {} (Set-Cookie)`)
	case r.Header != "" && r.Cookie != nil:
		return policyErr(where, `"header" and "cookie" are exclusive; set one`)
	case r.Cookie != nil && !fromCookie:
		return policyErr(where+".cookie", `the ciphertext comes from a header; reseal into a response "header" instead`)
	case r.Header != "":
		return validateHeaderName(where+".header", r.Header, true)
	}
	c := r.Cookie
	if c.Path != "" && (c.Path[0] != '/' || strings.ContainsAny(c.Path, ";\r\n\x00")) {
		return policyErr(where+".cookie.path", "%q must start with \"/\" and hold no \";\" or control characters", c.Path)
	}
	if strings.ContainsAny(c.Domain, "; \t\r\n\x00") {
		return policyErr(where+".cookie.domain", "%q is not a domain", c.Domain)
	}
	if c.MaxAgeSeconds < 0 {
		return policyErr(where+".cookie.max_age_seconds", "%d is negative; use 0 for a session cookie", c.MaxAgeSeconds)
	}
	if err := c.cookie("name", "value").Valid(); err != nil {
		return policyErr(where+".cookie", "%v", err)
	}
	switch c.SameSite {
	case "", "lax", "strict":
	case "none":
		if c.Secure != nil && !*c.Secure {
			return policyErr(where+".cookie.same_site", `"none" requires "secure": true (browsers drop the cookie otherwise)`)
		}
	default:
		return policyErr(where+".cookie.same_site", `%q is not "lax", "strict" or "none"`, c.SameSite)
	}
	return nil
}

func (m *MACRule) validate(where string, verify bool) error {
	if err := validateKeysetName(where+".keyset", m.Keyset); err != nil {
		return err
	}
	switch {
	case !verify && (m.MaxSkewSeconds != 0 || m.RequireNonce):
		return policyErr(where, `"max_skew_seconds" and "require_nonce" apply to verify only; the upstream checks the timestamp and nonce a sign rule sets`)
	case m.MaxSkewSeconds < 0 || m.MaxSkewSeconds > maxSkewSeconds:
		return policyErr(where+".max_skew_seconds", "%d is outside 1 to %d; omit it for the default %d", m.MaxSkewSeconds, maxSkewSeconds, defaultSkewSeconds)
	}
	if m.Header == "" {
		return policyErr(where+".header", "missing; name the header that carries the MAC")
	}
	if err := validateHeaderName(where+".header", m.Header, true); err != nil {
		return err
	}
	if len(m.Parts) == 0 {
		return policyErr(where+".parts", `empty; list what the MAC covers, e.g. ["method", "path", "header:x-request-id"]`)
	}
	if len(m.Parts) > maxMACParts {
		return policyErr(where+".parts", "%d parts exceeds %d", len(m.Parts), maxMACParts)
	}
	seen := map[string]bool{}
	for i, part := range m.Parts {
		field := fmt.Sprintf("%s.parts[%d]", where, i)
		switch {
		case part == "method", part == "path", part == "query", part == "authority":
		case strings.HasPrefix(part, "header:"):
			if err := validateHeaderName(field, strings.TrimPrefix(part, "header:"), false); err != nil {
				return err
			}
			if part == "header:"+m.Header {
				return policyErr(field, "the MAC cannot cover its own header %q", m.Header)
			}
			if h := strings.TrimPrefix(part, "header:"); h == TimestampHeader || h == NonceHeader {
				return policyErr(field, "%q is always covered (as the timestamp and nonce lines); drop it", h)
			}
		default:
			return policyErr(field, `%q is not one of "method", "path", "query", "authority", "header:<name>"`, part)
		}
		if seen[part] {
			return policyErr(field, "%q is listed twice", part)
		}
		seen[part] = true
	}
	return nil
}

func validateKeysetName(where, name string) error {
	if name == "" {
		return policyErr(where, "missing; name the keyset (as in --keyset NAME=PATH)")
	}
	if err := envelope.ValidateName(name); err != nil {
		return policyErr(where, "%q: %v", name, err)
	}
	return nil
}

// reservedHeaders may not be written by a policy: rewriting them would
// corrupt the request or bypass Envoy.
var reservedHeaders = map[string]bool{
	"host": true, "cookie": true, "content-length": true, "transfer-encoding": true, "connection": true,
	"te": true, "upgrade": true, "keep-alive": true, "proxy-connection": true, "set-cookie": true,
	denyHeader: true, TimestampHeader: true, NonceHeader: true,
}

// validateHeaderName requires the lowercase form Envoy uses in CheckRequest
// attributes, so a rule can never silently miss a header.
func validateHeaderName(where, h string, written bool) error {
	if h == "" {
		return policyErr(where, "missing header name")
	}
	if strings.HasPrefix(h, ":") {
		return policyErr(where, "%q is an HTTP/2 pseudo-header; name a regular header", h)
	}
	if !isToken(h) {
		return policyErr(where, "%q is not a valid header name", h)
	}
	if lower := strings.ToLower(h); lower != h {
		return policyErr(where, "%q must be lowercase (Envoy lowercases header names); write %q", h, lower)
	}
	if written && reservedHeaders[h] {
		return policyErr(where, "%q cannot be written by a policy; pick another name", h)
	}
	return nil
}

// isToken reports whether s is an RFC 9110 token (header and cookie names).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// match returns the route with the longest prefix of reqPath on a segment
// boundary, or nil.
func (p *Policy) match(reqPath string) *Route {
	for _, r := range p.byLength {
		base := segmentPrefix(r.Prefix)
		if strings.HasPrefix(reqPath, base) && (len(reqPath) == len(base) || reqPath[len(base)] == '/') {
			return r
		}
	}
	return nil
}

// cookie builds the Set-Cookie for a resealed value with the policy's
// attributes and their safe defaults.
func (c *Cookie) cookie(name, value string) *http.Cookie {
	hc := &http.Cookie{Name: name, Value: value, Path: c.Path, Domain: c.Domain, MaxAge: c.MaxAgeSeconds,
		Secure: c.Secure == nil || *c.Secure, HttpOnly: c.HTTPOnly == nil || *c.HTTPOnly, SameSite: http.SameSiteLaxMode}
	if hc.Path == "" {
		hc.Path = "/"
	}
	switch c.SameSite {
	case "strict":
		hc.SameSite = http.SameSiteStrictMode
	case "none":
		hc.SameSite = http.SameSiteNoneMode
	}
	return hc
}
