package aws

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/aws/localkms"
)

// parsed is a uriTarget with exported fields, for cmp.
type parsed struct {
	ID, Partition, Region, Account, QueryRegion string
	Alias                                       bool
}

func TestParseURI(t *testing.T) {
	const (
		id  = "1234abcd-12ab-34cd-56ef-1234567890ab"
		mrk = "mrk-1234abcd12ab34cd56ef1234567890ab"
		arn = "arn:aws:kms:us-east-1:111122223333:key/" + id
	)
	keyARN := parsed{ID: arn, Partition: "aws", Region: "us-east-1", Account: "111122223333"}
	for _, tc := range []struct {
		uri  string
		want parsed
	}{
		{"aws-kms:///" + arn, keyARN},
		{"aws-kms://" + arn, keyARN}, // the Tink form, which url.Parse alone refuses
		{"aws-kms:" + arn, keyARN},
		{"aws-kms:///" + arn + "?region=us-east-1", parsed{ID: arn, Partition: "aws", Region: "us-east-1", Account: "111122223333", QueryRegion: "us-east-1"}},
		{"aws-kms:///arn:aws:kms:eu-west-2:111122223333:alias/app",
			parsed{ID: "arn:aws:kms:eu-west-2:111122223333:alias/app", Partition: "aws", Region: "eu-west-2", Account: "111122223333", Alias: true}},
		{"aws-kms:///arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/" + mrk,
			parsed{ID: "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/" + mrk, Partition: "aws-us-gov", Region: "us-gov-west-1", Account: "111122223333"}},
		{"aws-kms:///arn:aws-cn:kms:cn-north-1:111122223333:key/" + id,
			parsed{ID: "arn:aws-cn:kms:cn-north-1:111122223333:key/" + id, Partition: "aws-cn", Region: "cn-north-1", Account: "111122223333"}},
		{"aws-kms://alias/app", parsed{ID: "alias/app", Alias: true}},
		{"aws-kms:///alias/app", parsed{ID: "alias/app", Alias: true}},
		{"aws-kms://alias/team/app_1-x?region=eu-central-1", parsed{ID: "alias/team/app_1-x", Alias: true, QueryRegion: "eu-central-1"}},
		{"aws-kms://" + id, parsed{ID: id}},
		{"aws-kms://" + mrk + "?region=ap-southeast-2", parsed{ID: mrk, QueryRegion: "ap-southeast-2"}},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			u, err := ParseURI(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			tg, err := parseURL(u)
			if err != nil {
				t.Fatal(err)
			}
			got := parsed{ID: tg.ref.id, Alias: tg.ref.alias, Partition: tg.ref.home.partition, Region: tg.ref.home.region,
				Account: tg.ref.home.account, QueryRegion: tg.region}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parsed (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseURIErrors(t *testing.T) {
	const arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	for _, tc := range []struct {
		uri  string
		want string
	}{
		{"aws-kms://", "empty key reference"},
		{"aws-kms:///", "empty key reference"},
		{"aws-kms://app", "not a key ARN, alias ARN, alias/NAME or key ID"},
		{"aws-kms://alias/", "alias name"},
		{"aws-kms://alias/a%21", "alias name"},
		{"aws-kms:///arn:aws:s3:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", `service "s3" is not kms`},
		{"aws-kms:///arn:aws:kms:us-east-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab", "not 12 digits"},
		{"aws-kms:///arn:aws:kms:nowhere:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", "is not a region"},
		{"aws-kms:///arn:aws:kms:us-east-1:111122223333:key/not-a-key", "not a UUID"},
		{"aws-kms:///arn:aws:kms:us-east-1:111122223333:grant/x", "neither key/ID nor alias/NAME"},
		{"aws-kms:///arn:aws:kms:us-east-1", "six colon-separated parts"},
		{"aws-kms:///" + arn + "?region=eu-west-1", "contradicts the ARN's region us-east-1"},
		{"aws-kms://alias/app?region=nowhere", "is not a region"},
		{"aws-kms://alias/app?region=", "is not a region"},
		{"aws-kms://alias/app?regin=us-east-1", `unknown parameter "regin"`},
		{"aws-kms://alias/app?region=us-east-1&region=us-east-2", "given 2 times"},
		{"aws-kms://me@alias/app", "no user or fragment"},
		{"aws-kms://alias/app#x", "no user or fragment"},
		{"vault-transit://alias/app", "scheme is not aws-kms"},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			_, err := ParseURI(tc.uri)
			if !errors.Is(err, kms.ErrBadURI) {
				t.Fatalf("ParseURI: %v, want ErrBadURI", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "aws-kms: ") && !strings.HasPrefix(err.Error(), "kms: ") {
				t.Errorf("error %q lacks a component prefix", err)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	localkms.SetEnv(t) // no AWS_REGION
	ctx := testContext(t)
	for _, tc := range []struct {
		name string
		key  string
		opts []Option
		want string
	}{
		{"alias without a region", "alias/app", nil, "no region: use a key ARN, add ?region=REGION"},
		{"bad endpoint", "alias/app", []Option{WithRegion("us-east-1"), WithEndpoint("127.0.0.1:4599")}, "write http(s)://host[:port]"},
		{"bad region", "alias/app", []Option{WithRegion("Mars")}, "is not a region"},
		{"negative timeout", "alias/app", []Option{WithRegion("us-east-1"), WithTimeout(-time.Second)}, "must be positive"},
		{"bad retry policy", "alias/app", []Option{WithRegion("us-east-1"), WithRetry(RetryPolicy{MaxAttempts: 0, BaseDelay: time.Second})}, "MaxAttempts >= 1"},
		{"bad key", "app", []Option{WithRegion("us-east-1")}, "not a key ARN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(ctx, tc.key, tc.opts...)
			if !errors.Is(err, kms.ErrBadURI) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want ErrBadURI saying %q", err, tc.want)
			}
		})
	}
}

func TestRegionResolution(t *testing.T) {
	localkms.SetEnv(t)
	t.Setenv("AWS_REGION", "ap-south-1")
	ctx := testContext(t)
	const arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	for _, tc := range []struct {
		uri  string
		opts []Option
		want string
	}{
		{"aws-kms:///" + arn, []Option{WithRegion("eu-west-1")}, "us-east-1"}, // the ARN wins
		{"aws-kms://alias/app?region=eu-north-1", []Option{WithRegion("eu-west-1")}, "eu-north-1"},
		{"aws-kms://alias/app", []Option{WithRegion("eu-west-1")}, "eu-west-1"},
		{"aws-kms://alias/app", nil, "ap-south-1"}, // the SDK's default chain
	} {
		t.Run(tc.uri, func(t *testing.T) {
			u, err := ParseURI(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			w, err := Opener(slog.New(slog.DiscardHandler), tc.opts...)(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			if got := w.(*Client).region; got != tc.want {
				t.Errorf("region %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClientNamesOnlyItsKey(t *testing.T) {
	localkms.SetEnv(t)
	c, err := New(testContext(t), "alias/app", WithRegion("us-east-1"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"aws-kms:///alias/app", "aws-kms:///alias/app"}, []string{c.String(), c.LogValue().String()}); diff != "" {
		t.Errorf("String and LogValue (-want +got):\n%s", diff)
	}
	// What String renders opens again.
	if _, err := ParseURI(c.String()); err != nil {
		t.Errorf("String %q does not parse: %v", c.String(), err)
	}
}

func TestEncryptionContext(t *testing.T) {
	for _, tc := range []struct {
		aad  []byte
		want map[string]string
	}{
		{nil, nil},
		{[]byte{}, nil},
		{[]byte("keyshift keyset payments v7"), map[string]string{"keyshift-aad-text": "keyshift keyset payments v7"}},
		{[]byte(" ~"), map[string]string{"keyshift-aad-text": " ~"}},
		{[]byte("tab\there"), map[string]string{"keyshift-aad-b64url": "dGFiCWhlcmU"}},
		{[]byte("caf\xc3\xa9"), map[string]string{"keyshift-aad-b64url": "Y2Fmw6k"}},
		{[]byte{0xfb, 0xff}, map[string]string{"keyshift-aad-b64url": "-_8"}},
	} {
		if diff := cmp.Diff(tc.want, EncryptionContext(tc.aad)); diff != "" {
			t.Errorf("EncryptionContext(%q) (-want +got):\n%s", tc.aad, diff)
		}
	}
}

func TestParseKEKVersion(t *testing.T) {
	const arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	for _, tc := range []struct{ in, arn, material string }{
		{arn, arn, ""},
		{arn + "#abc123", arn, "abc123"},
		{"", "", ""},
	} {
		a, m := ParseKEKVersion(tc.in)
		if diff := cmp.Diff([]string{tc.arn, tc.material}, []string{a, m}); diff != "" {
			t.Errorf("ParseKEKVersion(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}
