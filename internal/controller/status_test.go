package controller

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keyshift/keyshift/internal/clusterstatus"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
)

// GET /v1/status on the metrics address: nothing while the replica does
// not lead, the engine's last outcome per keyset while it does.
func TestStatusEndpoint(t *testing.T) {
	ksDir, dir := keysetDir(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := Start(ctx, Config{KeysetDir: ksDir, AuditLog: filepath.Join(dir, "audit.jsonl"), MetricsAddr: "127.0.0.1:0", Manual: true,
		KMS: kms.Registry{local.Scheme: local.Open}, Interval: time.Hour, Identity: "ctl-a", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = c.Wait() }()
	get := func() clusterstatus.ControllerStatus {
		t.Helper()
		resp, err := http.Get("http://" + c.MetricsAddr() + clusterstatus.ControllerPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET %s: %s, %s", clusterstatus.ControllerPath, resp.Status, resp.Header.Get("Content-Type"))
		}
		var st clusterstatus.ControllerStatus
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	ignoreTimes := cmpopts.IgnoreFields(clusterstatus.ControllerStatus{}, "Time")
	if diff := cmp.Diff(clusterstatus.ControllerStatus{Identity: "ctl-a"}, get(), ignoreTimes); diff != "" {
		t.Fatalf("before leading (-want +got):\n%s", diff)
	}

	if err := c.Lead(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Engine().Rotate(ctx, "orders", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Engine().Reconcile(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	want := clusterstatus.ControllerStatus{Identity: "ctl-a", Leading: true, Keysets: []rotation.KeysetState{
		{Key: "orders", Action: "promote", Versions: []uint32{2}, Reason: "every reader has it"}}}
	got := get()
	if diff := cmp.Diff(want, got, ignoreTimes, cmpopts.IgnoreFields(rotation.KeysetState{}, "At")); diff != "" {
		t.Fatalf("leading (-want +got):\n%s", diff)
	}
	if age := time.Since(got.Keysets[0].At); age < 0 || age > time.Minute {
		t.Fatalf("the pass is dated %s", got.Keysets[0].At)
	}

	c.StepDown()
	if st := get(); st.Leading || st.Keysets != nil {
		t.Fatalf("after stepping down: %+v", st)
	}
}
