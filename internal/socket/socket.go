// Package socket is the local transport the sidecar's servers share: the
// Unix socket file, the kernel-reported identity of the process on the
// other end (SO_PEERCRED, or /proc/net/tcp for loopback TCP), the UID
// allowlist, gRPC transport credentials that carry that identity, one
// socket serving both gRPC and HTTP/1, and a graceful gRPC stop. It knows
// nothing of keys: the socket API, ext_authz and the load tool's
// like-for-like floor all build on it.
package socket

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

// Peer is who is on the other end of a connection, as the kernel reports
// it at connect time: the peer cannot forge it.
type Peer struct {
	PID int32
	UID uint32
	GID uint32
}

// PeerOf reads the peer of a Unix socket connection (SO_PEERCRED), or the
// one the demux already read.
func PeerOf(c net.Conn) (Peer, error) {
	if pc, ok := c.(*peerConn); ok {
		return pc.peer, nil
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, errors.New("socket: not a unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if serr != nil {
		return Peer{}, serr
	}
	return Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// Listen creates the socket file with the given mode, replacing a stale
// socket left by a previous run but never a regular file nor a socket a
// live process still serves.
func Listen(path string, mode os.FileMode) (*net.UnixListener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("socket: %s exists and is not a socket; refusing to replace it", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket: %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("socket: remove stale socket: %w", err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket: listen: %w", err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket: chmod socket: %w", err)
	}
	return l, nil
}

// Allowlist decides which peer UIDs may call. A nil Allowlist lets any
// peer that can open the socket in (the file mode then decides).
type Allowlist map[uint32]bool

// NewAllowlist is the allowlist of uids; nil uids give the nil Allowlist.
func NewAllowlist(uids []uint32) Allowlist {
	if uids == nil {
		return nil
	}
	a := Allowlist{}
	for _, u := range uids {
		a[u] = true
	}
	return a
}

// Allows reports whether uid may call.
func (a Allowlist) Allows(uid uint32) bool { return a == nil || a[uid] }

// Describe names the allowed UIDs for a log line.
func Describe(uids []uint32) string {
	if uids == nil {
		return "any (socket file mode decides)"
	}
	parts := make([]string, len(uids))
	for i, u := range uids {
		parts[i] = fmt.Sprint(u)
	}
	return strings.Join(parts, ",")
}

type peerKey struct{}

// ConnContext is an http.Server ConnContext that puts a demuxed
// connection's peer into each request's context.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*peerConn); ok {
		return context.WithValue(ctx, peerKey{}, pc.peer)
	}
	return ctx
}

// FromContext is the peer of the call in ctx, on gRPC (served with Creds)
// or HTTP (served with ConnContext).
func FromContext(ctx context.Context) (Peer, bool) {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(AuthInfo); ok {
			return info.Peer, true
		}
	}
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// StopGRPC lets in-flight calls finish for up to grace, then cuts the rest.
func StopGRPC(gs *grpc.Server, grace time.Duration) {
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(grace):
		gs.Stop()
	}
}
