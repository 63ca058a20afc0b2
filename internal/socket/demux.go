package socket

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// peerConn is an accepted connection with its peer and the bytes already
// read to tell gRPC from HTTP/1.
type peerConn struct {
	net.Conn
	peer   Peer
	prefix []byte
}

func (c *peerConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// Demux serves gRPC and HTTP/1 on one Unix socket. Each accepted
// connection's peer is read first (a connection without one is closed);
// then its first three bytes decide: the HTTP/2 preface ("PRI") goes to
// GRPC, anything else to HTTP.
type Demux struct {
	l          *net.UnixListener
	grpc, http *chanListener
	log        *slog.Logger
	wg         sync.WaitGroup
}

// NewDemux splits l; call Serve to start accepting.
func NewDemux(l *net.UnixListener, log *slog.Logger) *Demux {
	return &Demux{l: l, grpc: newChanListener(l.Addr()), http: newChanListener(l.Addr()), log: log}
}

// GRPC is the listener to serve gRPC on (with Creds).
func (d *Demux) GRPC() net.Listener { return d.grpc }

// HTTP is the listener to serve HTTP/1 on (with ConnContext).
func (d *Demux) HTTP() net.Listener { return d.http }

// Serve accepts until ctx is canceled or Close is called.
func (d *Demux) Serve(ctx context.Context) {
	defer d.grpc.Close()
	defer d.http.Close()
	for {
		c, err := d.l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				d.wg.Wait()
				return
			}
			d.log.Warn("accept failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.route(c)
		}()
	}
}

func (d *Demux) route(c net.Conn) {
	p, err := PeerOf(c)
	if err != nil {
		d.log.Warn("reading peer credentials failed; closing connection", "err", err)
		c.Close()
		return
	}
	prefix := make([]byte, 3)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, prefix); err != nil {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	pc := &peerConn{Conn: c, peer: p, prefix: prefix}
	target := d.http
	if string(prefix) == "PRI" {
		target = d.grpc
	}
	if !target.push(pc) {
		c.Close()
	}
}

// Close stops accepting.
func (d *Demux) Close() error { return d.l.Close() }

// chanListener is a net.Listener fed by the demux.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// AuthInfo carries a connection's Peer into gRPC handlers.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Peer Peer
}

// AuthType names the scheme.
func (AuthInfo) AuthType() string { return "unix-peercred" }

// Creds is gRPC transport "security" for a demuxed Unix socket: it does no
// encryption, it only attaches the kernel-reported peer.
type Creds struct{}

var local = credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}

// ClientHandshake attaches nothing: clients know their server by path.
func (Creds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, AuthInfo{CommonAuthInfo: local}, nil
}

// ServerHandshake refuses a connection that did not come through a Demux.
func (Creds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pc, ok := c.(*peerConn)
	if !ok {
		return nil, nil, errors.New("socket: connection without peer credentials")
	}
	return c, AuthInfo{CommonAuthInfo: local, Peer: pc.peer}, nil
}

// Info names the protocol.
func (Creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}

// Clone returns the same (stateless) credentials.
func (c Creds) Clone() credentials.TransportCredentials { return c }

// OverrideServerName is a no-op.
func (Creds) OverrideServerName(string) error { return nil }
