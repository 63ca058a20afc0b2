// Package xdstest holds helpers for tests of keyset distribution across
// controller replicas.
package xdstest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Balancer is a real TCP load balancer on loopback that sends each new
// connection to the next backend in turn, as kube-proxy spreads the
// connections to a Service over its endpoints. An open connection stays
// with its backend, as it does through a ClusterIP.
type Balancer struct {
	// Addr is where clients connect.
	Addr string

	l     net.Listener
	mu    sync.Mutex
	ends  []string
	next  int
	conns map[net.Conn]bool
	dials []string
}

// NewBalancer starts a Balancer over backends; it stops when tb ends.
func NewBalancer(tb testing.TB, backends ...string) *Balancer {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	b := &Balancer{Addr: l.Addr().String(), l: l, ends: backends, conns: map[net.Conn]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.serve()
	}()
	tb.Cleanup(func() {
		l.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.conns = nil
		b.mu.Unlock()
		<-done
	})
	return b
}

// SetBackends replaces the endpoints for new connections, as when a
// Service's selector starts or stops matching a pod.
func (b *Balancer) SetBackends(backends ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ends = backends
	b.next = 0
}

// Dials returns the backend each connection so far was sent to, in order.
func (b *Balancer) Dials() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.dials...)
}

func (b *Balancer) serve() {
	for {
		c, err := b.l.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if len(b.ends) == 0 {
			b.mu.Unlock()
			c.Close() // no endpoints: refused
			continue
		}
		to := b.ends[b.next%len(b.ends)]
		b.next++
		b.dials = append(b.dials, to)
		b.mu.Unlock()
		go b.pipe(c, to)
	}
}

// pipe copies both ways between c and backend to until either side closes.
func (b *Balancer) pipe(c net.Conn, to string) {
	s, err := net.Dial("tcp", to)
	if err != nil {
		c.Close()
		return
	}
	if !b.track(c, s) {
		return
	}
	defer b.untrack(c, s)
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(s, c); s.Close() })
	_, _ = io.Copy(c, s)
	c.Close()
	wg.Wait()
}

// track registers a pair for closing at cleanup, unless the listener is
// already closed.
func (b *Balancer) track(cs ...net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		b.conns[c] = true
	}
	return true
}

func (b *Balancer) untrack(cs ...net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range cs {
		delete(b.conns, c)
	}
}
