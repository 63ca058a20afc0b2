package extauthz

import (
	"context"
	"slices"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
)

// BenchmarkExtAuthzCheck measures the latency Envoy sees for one Check
// with the cookie-decrypt policy against the same call answered by the
// no-op (allow-all) policy, interleaved in the same run over real gRPC
// connections, and reports p50/p99 of both and their ratio:
//
//	go test -run '^$' -bench ExtAuthzCheck -benchtime 20000x ./sidecar/
//
// "reseal" decrypts a cookie from before a rotation, so every call also
// seals the value again under the new primary.
func BenchmarkExtAuthzCheck(b *testing.B) {
	for _, mode := range []string{"unix", "tcp", "unix-reseal"} {
		b.Run(mode, func(b *testing.B) { benchExtAuthz(b, mode) })
	}
}

func benchExtAuthz(b *testing.B, mode string) {
	a := newAuthzEnv(b, testPolicy)
	session := a.seal(b, "payments", "alice@example.com|role=buyer|tenant=acme", sessionCtx)
	decrypt := a.unix
	if mode == "tcp" {
		decrypt = a.tcp
	}
	a.start(b, `{"default": "allow", "routes": []}`)
	noop := a.unix
	if mode == "tcp" {
		noop = a.tcp
	}
	want := 0
	if mode == "unix-reseal" {
		a.rotate("payments")
		want = 1
	}
	req := envoyRequest("GET", "/app/cart?item=42&ref=home", map[string]string{
		"cookie":          "theme=dark; session=" + session + "; _ga=GA1.2.1234567890.1700000000; consent=yes",
		"accept-language": "en-GB,en;q=0.9", "accept-encoding": "gzip, deflate, br", "referer": "https://shop.example.com/",
		"sec-fetch-mode": "navigate", "x-forwarded-for": "203.0.113.7", "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
	})
	ctx := context.Background()
	call := func(c authv3.AuthorizationClient) (time.Duration, *authv3.CheckResponse) {
		start := time.Now()
		resp, err := c.Check(ctx, req)
		took := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
			b.Fatalf("denied: %v", resp.GetDeniedResponse().GetBody())
		}
		return took, resp
	}
	for range 200 { // warm both connections and the handler goroutines
		call(decrypt)
		call(noop)
	}
	withPolicy := make([]time.Duration, 0, b.N)
	baseline := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Alternate the order so neither side always runs on a warmer cache.
		if i%2 == 0 {
			d, resp := call(decrypt)
			withPolicy = append(withPolicy, d)
			if n := len(resp.GetOkResponse().GetResponseHeadersToAdd()); n != want {
				b.Fatalf("%d response headers, want %d", n, want)
			}
			d, _ = call(noop)
			baseline = append(baseline, d)
		} else {
			d, _ := call(noop)
			baseline = append(baseline, d)
			d, _ = call(decrypt)
			withPolicy = append(withPolicy, d)
		}
	}
	b.StopTimer()
	p50, p99 := percentile(withPolicy, 50), percentile(withPolicy, 99)
	n50, n99 := percentile(baseline, 50), percentile(baseline, 99)
	b.ReportMetric(p50, "p50-ns")
	b.ReportMetric(p99, "p99-ns")
	b.ReportMetric(n50, "noop-p50-ns")
	b.ReportMetric(n99, "noop-p99-ns")
	b.ReportMetric(p50/n50, "x-noop-p50")
	b.ReportMetric(p99/n99, "x-noop-p99")
	b.ReportMetric(p50-n50, "overhead-p50-ns")
}

// percentile is the nearest-rank percentile of ds in nanoseconds.
func percentile(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return float64(s[max(i, 0)].Nanoseconds())
}
