package gcp

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/keyshift/keyshift/internal/kms"
)

// Resource-ID patterns, as Cloud KMS documents them. A project is an ID
// (my-project), a number (123456789012) or a domain-scoped ID
// (example.com:my-project); a location is a region, a multi-region or
// "global"; key ring and key IDs are 1-63 letters, digits, '_' or '-'.
var (
	projectPattern  = regexp.MustCompile(`^([a-z][a-z0-9.-]*[a-z0-9]:)?[a-z0-9][a-z0-9-]{0,62}$`)
	locationPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	idPattern       = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)
)

const uriHint = "write gcp-kms://projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY"

// ParseURI returns the CryptoKey resource name a gcp-kms URI names:
//
//	gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K
//	gcp-kms:///projects/P/locations/L/keyRings/R/cryptoKeys/K   (same key)
//
// The URI carries no endpoint, credentials or options, so a keyset stays
// valid wherever it is read. Anything else is refused with kms.ErrBadURI and
// a message that says what to write.
func ParseURI(u *url.URL) (string, error) {
	if u.Scheme != Scheme {
		return "", fmt.Errorf("gcp-kms: %q: scheme is not %s (%s): %w", u.Redacted(), Scheme, uriHint, kms.ErrBadURI)
	}
	if u.User != nil || u.Port() != "" || u.Opaque != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawPath != "" {
		return "", fmt.Errorf("gcp-kms: %q: no user, port, query, fragment or escaped characters allowed (%s): %w", u.Redacted(), uriHint, kms.ErrBadURI)
	}
	if err := CheckKeyName(strings.Trim(u.Host+u.Path, "/")); err != nil {
		return "", err
	}
	return strings.Trim(u.Host+u.Path, "/"), nil
}

// CheckKeyName reports whether name is a CryptoKey resource name,
// projects/P/locations/L/keyRings/R/cryptoKeys/K, refusing it with
// kms.ErrBadURI otherwise. A CryptoKeyVersion name is refused: keyshift
// encrypts with the key's primary version and lets Cloud KMS pick the
// version to decrypt with.
func CheckKeyName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("gcp-kms: key %q: %s (%s): %w", name, why, uriHint, kms.ErrBadURI)
	}
	parts := strings.Split(name, "/")
	if len(parts) == 10 && parts[8] == "cryptoKeyVersions" {
		return bad("names a CryptoKeyVersion; name the CryptoKey, whose primary version encrypts")
	}
	if len(parts) != 8 || parts[0] != "projects" || parts[2] != "locations" || parts[4] != "keyRings" || parts[6] != "cryptoKeys" {
		return bad("not a CryptoKey resource name")
	}
	switch {
	case !projectPattern.MatchString(parts[1]):
		return bad(fmt.Sprintf("project %q is not a project ID or number", parts[1]))
	case !locationPattern.MatchString(parts[3]):
		return bad(fmt.Sprintf("location %q is not a location such as global or europe-west1", parts[3]))
	case !idPattern.MatchString(parts[5]):
		return bad(fmt.Sprintf("key ring %q must be 1-63 letters, digits, '_' or '-'", parts[5]))
	case !idPattern.MatchString(parts[7]):
		return bad(fmt.Sprintf("key %q must be 1-63 letters, digits, '_' or '-'", parts[7]))
	}
	return nil
}

// versionOf returns the CryptoKeyVersion ID in a version name that belongs
// to key, or "" if name is not one of key's versions.
func versionOf(key, name string) string {
	id, ok := strings.CutPrefix(name, key+"/cryptoKeyVersions/")
	if !ok || !idPattern.MatchString(id) {
		return ""
	}
	return id
}
