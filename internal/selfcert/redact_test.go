package selfcert

import (
	"bytes"
	"fmt"
	"log/slog"
	"testing"
	"time"
)

// TestRedacted checks the types that hold private keys print and log as
// REDACTED, whichever way they are formatted.
func TestRedacted(t *testing.T) {
	cfg, err := Config{Namespace: "keyshift-system", Owner: "keyshift-controller", DNSNames: []string{"x.keyshift-system.svc"}}.settings()
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{}
	if _, err := cfg.renew(p, time.Now()); err != nil {
		t.Fatal(err)
	}
	data, err := p.data(nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &served{certPEM: data["tls.crt"], keyPEM: data["tls.key"], bundle: data[CABundleKey]}
	for name, v := range map[string]any{"pki": p, "served": s} {
		if got := fmt.Sprintf("%v %+v %s", v, v, v); got != "REDACTED REDACTED REDACTED" {
			t.Errorf("%s prints as %q", name, got)
		}
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "v", v)
		if !bytes.Contains(buf.Bytes(), []byte("v=REDACTED")) || bytes.Contains(buf.Bytes(), []byte("KEY")) {
			t.Errorf("%s logs as %s", name, buf.Bytes())
		}
	}
}
