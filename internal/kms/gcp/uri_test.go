package gcp_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/gcp"
)

func TestParseURI(t *testing.T) {
	const key = "projects/my-project/locations/europe-west1/keyRings/keyshift/cryptoKeys/kek_1"
	for _, tc := range []struct {
		uri  string
		want string // key name, or a piece of the error
		ok   bool
	}{
		{"gcp-kms://" + key, key, true},
		{"gcp-kms:///" + key, key, true},
		{"gcp-kms://projects/123456789012/locations/global/keyRings/r/cryptoKeys/k", "projects/123456789012/locations/global/keyRings/r/cryptoKeys/k", true},
		{"gcp-kms://projects/example.com:proj/locations/us/keyRings/r/cryptoKeys/K-2", "projects/example.com:proj/locations/us/keyRings/r/cryptoKeys/K-2", true},
		{"gcp-kms://" + key + "/", key, true},

		{"gcp-kms://" + key + "/cryptoKeyVersions/3", "names a CryptoKeyVersion", false},
		{"gcp-kms://projects/p/locations/global/keyRings/r", "not a CryptoKey resource name", false},
		{"gcp-kms://projects/p/locations/global/keyrings/r/cryptoKeys/k", "not a CryptoKey resource name", false},
		{"gcp-kms://projects/p/locations/global/keyRings//cryptoKeys/k", "key ring \"\" must be", false},
		{"gcp-kms://projects/My_Project/locations/global/keyRings/r/cryptoKeys/k", "is not a project ID", false},
		{"gcp-kms://projects/p/locations/Europe/keyRings/r/cryptoKeys/k", "is not a location", false},
		{"gcp-kms://projects/p/locations/global/keyRings/r.s/cryptoKeys/k", "key ring", false},
		{"gcp-kms://projects/p/locations/global/keyRings/r/cryptoKeys/" + strings.Repeat("k", 64), "key \"kkk", false},
		{"gcp-kms://" + key + "?endpoint=localhost:1", "no user, port, query", false},
		{"gcp-kms://" + key + "#x", "no user, port, query", false},
		{"gcp-kms://user@" + key, "no user, port, query", false},
		{"gcp-kms://projects:443/p/locations/global/keyRings/r/cryptoKeys/k", "no user, port, query", false},
		{"gcp-kms://projects/p/locations/global/keyRings/r/cryptoKeys/a%2Fb", "escaped characters", false},
		{"aws-kms://" + key, "scheme is not gcp-kms", false},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			u, err := url.Parse(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			got, err := gcp.ParseURI(u)
			if tc.ok {
				if err != nil || got != tc.want {
					t.Errorf("ParseURI = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, kms.ErrBadURI) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "write gcp-kms://projects/") {
				t.Errorf("ParseURI = %q, %v; want %v saying %q and what to write", got, err, kms.ErrBadURI, tc.want)
			}
		})
	}
}
