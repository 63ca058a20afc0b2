package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestDemoRotatesWithNoFailures(t *testing.T) {
	var out bytes.Buffer
	sum, err := Run(context.Background(), Options{Clients: 4, Duration: 900 * time.Millisecond, PayloadSize: 256}, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if sum.Failed != 0 || sum.FailedDuring != 0 || sum.DuringRotation == 0 || sum.ByVersion[1] == 0 || sum.ByVersion[2] == 0 {
		t.Fatalf("summary %+v\n%s", sum, out.String())
	}
	if !strings.Contains(out.String(), "PASS: rotated live with 0 failed requests") {
		t.Fatalf("output:\n%s", out.String())
	}
}
