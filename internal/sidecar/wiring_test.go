package sidecar

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation/rotationtest"
	"github.com/keyshift/keyshift/internal/testbin"
)

// A part that fails after Start stops the server, and Wait returns why: a
// sidecar whose xDS address can never be dialled exits (the kubelet then
// restarts it and shows the error) instead of serving forever without its
// keyset.
func TestWaitReturnsRunError(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, Config{
		Socket: filepath.Join(t.TempDir(), "ks.sock"), Keysets: map[string]string{"payments": ""},
		XDSAddr: "unix:///tmp/keyshift-no-such-socket%zz", XDSInsecure: true, NodeID: "ns/pod",
		KMS: kms.Registry{local.Scheme: local.Open},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "invalid URL escape") {
			t.Fatalf("Wait = %v, want the xDS client's error", err)
		}
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("still serving 10s after its xDS client failed; Wait after cancel = %v", <-done)
	}
}

// The KMS poller's only action is to make a keyset file be reread. An
// xDS-only keyset has no file (the controller pushes the rewrapped
// document), so no poller runs for it: no KMS call every period and no
// log of a reread that never happens. A file keyset beside it is polled.
func TestKMSPollOnlyForFileKeysets(t *testing.T) {
	ctx := ctxT(t)
	dir := newXDSKeyset(t)
	c := startController(t, dir, "")
	if _, err := c.eng.Reconcile(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	files := rotationtest.NewFiles(t, t.TempDir(), "webhooks")
	logs := &testbin.SyncBuffer{}
	sctx, cancel := context.WithCancel(ctx)
	s, err := Start(sctx, Config{
		Socket:  filepath.Join(dir, "ks.sock"),
		Keysets: map[string]string{"payments": "", "webhooks": files.Paths["webhooks"]},
		XDSAddr: c.addr, XDSInsecure: true, NodeID: "ns/pod", KMS: kms.Registry{local.Scheme: local.Open},
		KMSPoll: 5 * time.Millisecond, MetricsAddr: "127.0.0.1:0", Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	defer func() { cancel(); _ = s.Wait() }()
	waitReady(t, s)
	polled := func(name string) float64 {
		return testbin.MetricValue(t, "http://"+s.OpsAddr()+"/metrics", `keyshift_kms_polls_total{keyset="`+name+`",result="ok"}`)
	}
	waitUntil(t, func() bool { return polled("webhooks") >= 5 }, "the file keyset is polled")
	if n := polled("payments"); n != 0 {
		t.Errorf("the xDS-only keyset was polled %v times; its poller has nothing to reread", n)
	}
	if strings.Contains(logs.String(), `"keyset":"payments","reason"`) {
		t.Errorf("KMS poll of the xDS-only keyset logged:\n%s", logs.String())
	}
}
