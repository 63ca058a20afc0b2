package localkms

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// Reply is an answer the Proxy gives itself instead of forwarding.
type Reply struct {
	// Status is the HTTP status.
	Status int
	// Body is the JSON body.
	Body string
}

// APIError is the reply KMS gives for an error: HTTP status and a JSON body
// with __type set to code, as the AWS JSON 1.1 protocol has it.
func APIError(status int, code, message string) *Reply {
	b, _ := json.Marshal(map[string]string{"__type": code, "message": message})
	return &Reply{Status: status, Body: string(b)}
}

// Proxy is a loopback HTTP server in front of a Server speaking the same
// wire protocol. It records every operation it sees, and can answer chosen
// requests itself (throttling, internal errors, APIs local-kms lacks) or
// amend the server's JSON answers (fields local-kms does not send). Faults
// are thus injected on the real wire, through the real SDK, in front of a
// real server.
type Proxy struct {
	// URL is the proxy's endpoint, http://127.0.0.1:PORT.
	URL    string
	target string

	mu     sync.Mutex
	ops    []string
	handle func(op string, request map[string]any) *Reply
	amend  func(op string, request, answer map[string]any)
}

// StartProxy starts a proxy to target (a Server's Endpoint) and closes it
// when the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p := &Proxy{target: target}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// Handle sets f to see each request first: a non-nil Reply is sent as the
// answer, nil forwards the request.
func (p *Proxy) Handle(f func(op string, request map[string]any) *Reply) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.handle = f
}

// Amend sets f to edit the server's successful JSON answers before they
// are passed on.
func (p *Proxy) Amend(f func(op string, request, answer map[string]any)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.amend = f
}

// Ops lists the operations seen so far ("Encrypt", "DescribeKey", ...), in order.
func (p *Proxy) Ops() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ops...)
}

// Count is how many times op was seen.
func (p *Proxy) Count(op string) int {
	n := 0
	for _, o := range p.Ops() {
		if o == op {
			n++
		}
	}
	return n
}

// Reset forgets the operations seen so far.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ops = nil
}

// ServeHTTP records, answers or forwards one request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	op := r.Header.Get("X-Amz-Target")
	if _, after, ok := strings.Cut(op, "."); ok {
		op = after
	}
	var request map[string]any
	_ = json.Unmarshal(body, &request)

	p.mu.Lock()
	p.ops = append(p.ops, op)
	handle, amend := p.handle, p.amend
	p.mu.Unlock()

	if handle != nil {
		if reply := handle(op, request); reply != nil {
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.WriteHeader(reply.Status)
			_, _ = io.WriteString(w, reply.Body)
			return
		}
	}

	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		// The server is down: drop the connection, as the server would.
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	if amend != nil && resp.StatusCode == http.StatusOK {
		var m map[string]any
		if err := json.Unmarshal(answer, &m); err == nil {
			amend(op, request, m)
			if b, err := json.Marshal(m); err == nil {
				answer = b
			}
		}
	}
	for k, v := range resp.Header {
		if k != "Content-Length" {
			w.Header()[k] = v
		}
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(answer)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}
