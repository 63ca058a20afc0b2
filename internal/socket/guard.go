package socket

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Guard wraps l so that connections from peers whose UID allow does not
// allow are closed before any byte is read. On a Unix socket the kernel
// reports the peer (SO_PEERCRED); on loopback TCP the peer's socket is
// looked up in /proc/net/tcp{,6}, which lists its owner's UID. A peer that
// cannot be identified is refused. refused, if set, hears of each one.
func Guard(l net.Listener, allow Allowlist, refused func(uid uint32, known bool, err error)) net.Listener {
	return &guarded{Listener: l, allow: allow, refused: refused, procNet: "/proc/net"}
}

type guarded struct {
	net.Listener
	allow   Allowlist
	refused func(uid uint32, known bool, err error)
	procNet string // "/proc/net"; tests may point elsewhere
}

func (l *guarded) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := l.peerUID(c)
		if err == nil && l.allow.Allows(uid) {
			return c, nil
		}
		if l.refused != nil {
			l.refused(uid, err == nil, err)
		}
		c.Close()
	}
}

func (l *guarded) peerUID(c net.Conn) (uint32, error) {
	if tc, ok := c.(*net.TCPConn); ok {
		return TCPPeerUID(l.procNet, tc.LocalAddr().(*net.TCPAddr), tc.RemoteAddr().(*net.TCPAddr))
	}
	p, err := PeerOf(c)
	return p.UID, err
}

// TCPPeerUID finds the UID owning the other end of a loopback TCP
// connection: the socket whose local address is our remote and whose remote
// address is our local, as the kernel lists it in /proc/net/tcp or tcp6
// (addresses as native-endian 32-bit words in hex, ports in hex).
func TCPPeerUID(procNet string, local, remote *net.TCPAddr) (uint32, error) {
	file, width := "tcp", 4
	if local.IP.To4() == nil {
		file, width = "tcp6", 16
	}
	want := func(a *net.TCPAddr) string {
		ip := a.IP.To16()
		if width == 4 {
			ip = a.IP.To4()
		}
		var b strings.Builder
		for i := 0; i < len(ip); i += 4 {
			fmt.Fprintf(&b, "%08X", binary.NativeEndian.Uint32(ip[i:i+4]))
		}
		fmt.Fprintf(&b, ":%04X", a.Port)
		return b.String()
	}
	peerLocal, peerRemote := want(remote), want(local)
	data, err := os.ReadFile(filepath.Join(procNet, file))
	if err != nil {
		return 0, fmt.Errorf("socket: identify TCP peer: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[1] != peerLocal || f[2] != peerRemote {
			continue
		}
		uid, err := strconv.ParseUint(f[7], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("socket: identify TCP peer: bad uid %q in %s", f[7], file)
		}
		return uint32(uid), nil
	}
	return 0, fmt.Errorf("socket: identify TCP peer: %s not in %s (not a local process?)", peerLocal, file)
}
