package aws

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/keyshift/keyshift/internal/kms"
)

// keyRef is a parsed reference to a KMS key: what is sent as KeyId, and
// where the key lives when the reference says so.
type keyRef struct {
	// id is sent as KeyId: a key ARN, an alias ARN, alias/NAME or a key ID.
	id string
	// alias is true for alias/NAME and alias ARNs.
	alias bool
	// home is the key's partition, region and account; empty fields are
	// unknown (alias/NAME and bare key IDs say nothing about them).
	home home
}

// home is where a key lives. Two keys with the same home are in the same
// partition, region and account.
type home struct {
	partition, region, account string
}

func (h home) known() bool { return h.partition != "" && h.region != "" && h.account != "" }

var (
	// Key IDs: a UUID, or mrk- and 32 hex digits for a multi-Region key.
	keyIDPattern = regexp.MustCompile(`^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|mrk-[0-9a-fA-F]{32})$`)
	// Alias names after "alias/", as KMS allows them (1 to 250 characters).
	aliasPattern     = regexp.MustCompile(`^[a-zA-Z0-9/_-]{1,250}$`)
	partitionPattern = regexp.MustCompile(`^aws(-[a-z]+)*$`)
	regionPattern    = regexp.MustCompile(`^[a-z]{2,4}(-[a-z]+)+-[0-9]+$`)
	accountPattern   = regexp.MustCompile(`^[0-9]{12}$`)
)

const uriHelp = "write aws-kms:///arn:aws:kms:REGION:ACCOUNT:key/ID, aws-kms://alias/NAME or aws-kms://KEY-ID, optionally with ?region=REGION"

// parseKeyRef parses a key ARN, an alias ARN, alias/NAME or a key ID.
func parseKeyRef(s string) (keyRef, error) {
	bad := func(format string, a ...any) (keyRef, error) {
		return keyRef{}, fmt.Errorf("aws-kms: key %q: %s (%s): %w", s, fmt.Sprintf(format, a...), uriHelp, kms.ErrBadURI)
	}
	switch {
	case s == "":
		return bad("empty key reference")
	case strings.HasPrefix(s, "arn:"):
		parts := strings.SplitN(s, ":", 6)
		if len(parts) != 6 {
			return bad("an ARN has six colon-separated parts")
		}
		h := home{partition: parts[1], region: parts[3], account: parts[4]}
		resource := parts[5]
		switch {
		case !partitionPattern.MatchString(h.partition):
			return bad("partition %q is not aws, aws-cn, aws-us-gov, ...", h.partition)
		case parts[2] != "kms":
			return bad("service %q is not kms", parts[2])
		case !regionPattern.MatchString(h.region):
			return bad("region %q is not a region such as us-east-1", h.region)
		case !accountPattern.MatchString(h.account):
			return bad("account %q is not 12 digits", h.account)
		}
		if name, ok := strings.CutPrefix(resource, "alias/"); ok {
			if !aliasPattern.MatchString(name) {
				return bad("alias name %q must be 1-250 of a-z A-Z 0-9 / _ -", name)
			}
			return keyRef{id: s, alias: true, home: h}, nil
		}
		if id, ok := strings.CutPrefix(resource, "key/"); ok {
			if !keyIDPattern.MatchString(id) {
				return bad("key ID %q is not a UUID or mrk-<32 hex digits>", id)
			}
			return keyRef{id: s, home: h}, nil
		}
		return bad("resource %q is neither key/ID nor alias/NAME", resource)
	case strings.HasPrefix(s, "alias/"):
		name := strings.TrimPrefix(s, "alias/")
		if !aliasPattern.MatchString(name) {
			return bad("alias name %q must be 1-250 of a-z A-Z 0-9 / _ -", name)
		}
		return keyRef{id: s, alias: true}, nil
	case keyIDPattern.MatchString(s):
		return keyRef{id: s}, nil
	}
	return bad("not a key ARN, alias ARN, alias/NAME or key ID")
}

// parseKeyARN parses a key ARN (not an alias) and returns its key's home.
func parseKeyARN(s string) (home, bool) {
	r, err := parseKeyRef(s)
	if err != nil || r.alias || !r.home.known() {
		return home{}, false
	}
	return r.home, true
}

// uriTarget is what an aws-kms URI names: a key reference and an optional
// region from ?region=.
type uriTarget struct {
	ref    keyRef
	region string
}

// parseURL reads an aws-kms URI. url.Parse splits the same reference
// differently depending on how it is written, so the reference is put back
// together from whichever parts hold it:
//
//	aws-kms://alias/NAME                 Host "alias", Path "/NAME"
//	aws-kms:///arn:aws:kms:R:A:key/ID    Host "",      Path "/arn:aws:kms:R:A:key/ID"
//	aws-kms:arn:aws:kms:R:A:key/ID       Opaque "arn:aws:kms:R:A:key/ID"
//	aws-kms://KEY-ID                     Host "KEY-ID"
//
// (aws-kms://arn:aws:kms:... itself does not get through url.Parse, which
// reads ":key" as an invalid port; ParseURI accepts that form.)
func parseURL(u *url.URL) (uriTarget, error) {
	bad := func(format string, a ...any) (uriTarget, error) {
		return uriTarget{}, fmt.Errorf("aws-kms: URI %q: %s (%s): %w", u.Redacted(), fmt.Sprintf(format, a...), uriHelp, kms.ErrBadURI)
	}
	if u.Scheme != Scheme {
		return bad("scheme is not %s", Scheme)
	}
	if u.User != nil || u.Fragment != "" || u.RawFragment != "" {
		return bad("no user or fragment allowed")
	}
	var s string
	switch {
	case u.Opaque != "":
		s = u.Opaque
	case u.Host != "":
		s = u.Host + u.Path
	default:
		s = strings.TrimPrefix(u.Path, "/")
	}
	ref, err := parseKeyRef(s)
	if err != nil {
		return uriTarget{}, err
	}
	t := uriTarget{ref: ref}
	q := u.Query()
	for k, v := range q {
		if k != "region" {
			return bad("unknown parameter %q (known: region)", k)
		}
		if len(v) != 1 {
			return bad("parameter %q given %d times", k, len(v))
		}
	}
	if r := q.Get("region"); r != "" || q.Has("region") {
		switch {
		case !regionPattern.MatchString(r):
			return bad("region %q is not a region such as us-east-1", r)
		case ref.home.region != "" && ref.home.region != r:
			return bad("region=%s contradicts the ARN's region %s", r, ref.home.region)
		}
		t.region = r
	}
	return t, nil
}

// ParseURI parses an aws-kms URI string into the *url.URL that Open takes.
// Unlike url.Parse (and so kms.ParseURI), it also accepts the ARN written
// straight after the double slash, aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID,
// the form Tink and the AWS Encryption SDK use, by reading it as
// aws-kms:///arn:....
func ParseURI(s string) (*url.URL, error) {
	if rest, ok := strings.CutPrefix(s, Scheme+"://arn:"); ok {
		s = Scheme + ":///arn:" + rest
	}
	u, err := kms.ParseURI(s)
	if err != nil {
		return nil, err
	}
	if _, err := parseURL(u); err != nil {
		return nil, err
	}
	return u, nil
}
