package rotation

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
)

func TestKMSPolicyCheck(t *testing.T) {
	var p KMSPolicy
	for _, v := range []string{"shop=aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/", "*=vault-transit://vault.vault.svc"} {
		if err := p.ParseAllowKMS(v); err != nil {
			t.Fatal(err)
		}
	}
	cluster := KMSPolicy{Cluster: true}
	cases := []struct {
		name   string
		p      *KMSPolicy
		scope  string
		uri    string
		wantOK bool
	}{
		{"no policy", nil, "shop", "local:///k", true},
		{"listed prefix", &p, "shop", "aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/abc", true},
		{"another account's key", &p, "shop", "aws-kms:///arn:aws:kms:eu-west-2:999999999999:key/abc", false},
		{"another namespace's prefix", &p, "bank", "aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/abc", false},
		{"every namespace", &p, "bank", "vault-transit://vault.vault.svc/transit/keys/bank", true},
		{"local not listed", &p, "shop", "local:///k", false},
		{"cluster without a list: local refused", &cluster, "shop", "local:///k", false},
		{"cluster without a list: a KMS allowed", &cluster, "shop", "aws-kms:///arn:aws:kms:eu-west-2:1:key/x", true},
		{"the audit KMS key", &KMSPolicy{Reserved: []string{"aws-kms:///arn:aws:kms:eu-west-2:1:key/audit"}}, "shop", "aws-kms:///arn:aws:kms:eu-west-2:1:key/audit", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.p.Check(c.scope, c.uri)
			if (err == nil) != c.wantOK || (err != nil && !errors.Is(err, ErrKMSNotAllowed)) {
				t.Fatalf("Check(%s, %s) = %v, want ok=%v", c.scope, c.uri, err, c.wantOK)
			}
		})
	}
	if err := p.ParseAllowKMS("shop"); err == nil {
		t.Fatal("a malformed --allow-kms was accepted")
	}
}

// A keyset naming a KMS key its namespace may not use is neither rotated
// nor distributed: the controller never acts on it with its own KMS
// identity (finding 7 of the security review).
func TestEngineRefusesDisallowedKMS(t *testing.T) {
	r := newRig(t, &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour)})
	r.eng.KMSPolicy = &KMSPolicy{Cluster: true}
	r.now = r.now.Add(2 * time.Hour)
	ctx := context.Background()
	out, err := r.eng.Reconcile(ctx, "payments")
	if !errors.Is(err, ErrKMSNotAllowed) || out.Action != "blocked" || !strings.Contains(out.Reason, "local://") {
		t.Fatalf("Reconcile = %+v, %v; want blocked by the KMS policy", out, err)
	}
	if _, ok := r.dist.published["payments"]; ok {
		t.Fatal("a keyset under a disallowed KMS key was distributed")
	}
	if got := r.states(); len(got) != 1 {
		t.Fatalf("versions %v: the engine acted on a disallowed KMS key", got)
	}
	if _, err := r.eng.Rotate(ctx, "payments", "manual"); !errors.Is(err, ErrKMSNotAllowed) {
		t.Fatalf("Rotate = %v, want ErrKMSNotAllowed", err)
	}
	if err := r.eng.PublishAll(ctx); err != nil || len(r.dist.published) != 0 {
		t.Fatalf("PublishAll published %d keysets (%v)", len(r.dist.published), err)
	}
}
