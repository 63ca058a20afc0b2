package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// PeerCred is who is on the other end of a Unix socket connection, as the
// kernel reports it (SO_PEERCRED) at connect time: it cannot be forged by
// the peer.
type PeerCred struct {
	PID int32
	UID uint32
	GID uint32
}

// peerConn is an accepted connection with its peer credentials and the
// bytes already read to tell gRPC from HTTP/1.
type peerConn struct {
	net.Conn
	cred   PeerCred
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

func peerCred(c net.Conn) (PeerCred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return PeerCred{}, fmt.Errorf("sidecar: not a unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return PeerCred{}, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return PeerCred{}, err
	}
	if serr != nil {
		return PeerCred{}, serr
	}
	return PeerCred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// listenUnix creates the socket file with the given mode, replacing a stale
// socket left by a previous run but never a regular file.
func listenUnix(path string, mode os.FileMode) (*net.UnixListener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("sidecar: %s exists and is not a socket; refusing to replace it", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("sidecar: %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("sidecar: remove stale socket: %w", err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("sidecar: listen: %w", err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("sidecar: chmod socket: %w", err)
	}
	return l, nil
}

// demux serves gRPC and HTTP/1 on one Unix socket. Each accepted
// connection's first three bytes decide: the HTTP/2 preface ("PRI") goes to
// gRPC, anything else to the HTTP/JSON API.
type demux struct {
	l         *net.UnixListener
	grpc, web *chanListener
	log       *slog.Logger
	wg        sync.WaitGroup
}

func newDemux(l *net.UnixListener, log *slog.Logger) *demux {
	return &demux{l: l, grpc: newChanListener(l.Addr()), web: newChanListener(l.Addr()), log: log}
}

func (d *demux) serve(ctx context.Context) {
	defer d.grpc.Close()
	defer d.web.Close()
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

func (d *demux) route(c net.Conn) {
	cred, err := peerCred(c)
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
	pc := &peerConn{Conn: c, cred: cred, prefix: prefix}
	target := d.web
	if string(prefix) == "PRI" {
		target = d.grpc
	}
	if !target.push(pc) {
		c.Close()
	}
}

func (d *demux) close() error { return d.l.Close() }

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

// uidAllowlist decides which peers may call the API. A nil allowlist lets
// any peer that can open the socket in (file mode then decides).
type uidAllowlist map[uint32]bool

func (a uidAllowlist) allows(uid uint32) bool { return a == nil || a[uid] }

// peerAuthInfo carries a connection's PeerCred into gRPC handlers.
type peerAuthInfo struct {
	credentials.CommonAuthInfo
	Cred PeerCred
}

func (peerAuthInfo) AuthType() string { return "unix-peercred" }

// peerCreds is gRPC transport "security" for a local Unix socket: it does
// no encryption, it only attaches the kernel-reported peer identity.
type peerCreds struct{}

func (peerCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, peerAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pc, ok := c.(*peerConn)
	if !ok {
		return nil, nil, errors.New("sidecar: connection without peer credentials")
	}
	return c, peerAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, Cred: pc.cred}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }
