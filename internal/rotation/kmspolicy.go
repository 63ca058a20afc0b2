package rotation

import (
	"errors"
	"fmt"
	"strings"
)

// ErrKMSNotAllowed: a keyset names a KMS key its namespace may not use.
var ErrKMSNotAllowed = errors.New("rotation: KMS key not allowed")

// KMSPolicy says which KMS URIs the keysets of each namespace may name.
// A keyset document chooses its own KMS URI (for Vault even the role,
// namespace and token file), and the controller acts on it with its own
// KMS identity: without a policy, whoever may write a keyset Secret in
// one namespace could have the controller generate and unwrap keys under
// another team's KMS key (a confused deputy).
type KMSPolicy struct {
	// Allow maps a namespace ("*" for every namespace) to URI prefixes.
	// Empty: every URI but local:// (see Cluster).
	Allow map[string][]string
	// Reserved are KMS URIs no keyset may name, whatever Allow says: the
	// controller's audit key is wrapped under one, and a keyset naming it
	// would let pods' KMS roles reach it.
	Reserved []string
	// Cluster refuses local:// unless a prefix allows it explicitly: a
	// file KEK inside a controller pod is neither shared with the
	// sidecars nor durable.
	Cluster bool
}

// ParseAllowKMS parses "NAMESPACE=URI_PREFIX" (NAMESPACE may be "*") into
// p.Allow.
func (p *KMSPolicy) ParseAllowKMS(v string) error {
	ns, prefix, ok := strings.Cut(v, "=")
	if !ok || ns == "" || !strings.Contains(prefix, "://") {
		return fmt.Errorf("--allow-kms %q: write NAMESPACE=URI_PREFIX, e.g. shop=aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/ or *=vault-transit://", v)
	}
	if p.Allow == nil {
		p.Allow = map[string][]string{}
	}
	p.Allow[ns] = append(p.Allow[ns], prefix)
	return nil
}

// Check reports whether a keyset of namespace scope may use uri.
func (p *KMSPolicy) Check(scope, uri string) error {
	if p == nil {
		return nil
	}
	for _, r := range p.Reserved {
		if redactURI(uri) == redactURI(r) {
			return fmt.Errorf("%w: %s is the controller's audit KMS key (--audit-kms); no keyset may use it", ErrKMSNotAllowed, redactURI(uri))
		}
	}
	if len(p.Allow) == 0 {
		if p.Cluster && strings.HasPrefix(uri, "local:") {
			return fmt.Errorf("%w: %s: local:// keeps the KEK in a file of the controller's pod; use a KMS, or allow it with --allow-kms %s=local://", ErrKMSNotAllowed, redactURI(uri), nsOrStar(scope))
		}
		return nil
	}
	for _, ns := range []string{scope, "*"} {
		for _, prefix := range p.Allow[ns] {
			if strings.HasPrefix(uri, prefix) {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: namespace %s may not use %s (allowed: %s); add --allow-kms %s=PREFIX to the controller", ErrKMSNotAllowed, nsOrStar(scope), redactURI(uri), strings.Join(append(p.Allow[scope], p.Allow["*"]...), ", "), nsOrStar(scope))
}

func nsOrStar(s string) string {
	if s == "" {
		return "*"
	}
	return s
}

// redactURI drops a URI's query (Vault token files and roles live there).
func redactURI(uri string) string {
	u, _, _ := strings.Cut(uri, "?")
	return u
}
