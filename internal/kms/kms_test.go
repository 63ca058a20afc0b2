package kms

import (
	"errors"
	"testing"
)

func TestParseURI(t *testing.T) {
	cases := []struct {
		in, scheme, host, path string
		err                    error
	}{
		{"local:///var/lib/kek.json", "local", "", "/var/lib/kek.json", nil},
		{"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd", "aws-kms", "", "/arn:aws:kms:eu-west-1:111122223333:key/1234abcd", nil},
		{"aws-kms:///arn:aws:kms:eu-west-1:111122223333:alias/app", "aws-kms", "", "/arn:aws:kms:eu-west-1:111122223333:alias/app", nil},
		{"vault-transit://transit/keyshift", "vault-transit", "transit", "/keyshift", nil},
		{"", "", "", "", ErrBadURI},
		{"/no/scheme", "", "", "", ErrBadURI},
	}
	for _, c := range cases {
		u, err := ParseURI(c.in)
		if !errors.Is(err, c.err) {
			t.Fatalf("ParseURI(%q) err = %v, want %v", c.in, err, c.err)
		}
		if err == nil && (u.Scheme != c.scheme || u.Host != c.host || u.Path != c.path) {
			t.Fatalf("ParseURI(%q) = %q %q %q", c.in, u.Scheme, u.Host, u.Path)
		}
	}
}
