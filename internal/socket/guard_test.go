package socket

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The /proc/net/tcp lookup, against a file laid out as the kernel writes it.
func TestTCPPeerUID(t *testing.T) {
	dir := t.TempDir()
	hexIP := func(ip net.IP) string {
		var b strings.Builder
		for i := 0; i < len(ip); i += 4 {
			fmt.Fprintf(&b, "%08X", binary.NativeEndian.Uint32(ip[i:i+4]))
		}
		return b.String()
	}
	lo4, lo6 := hexIP(net.IPv4(127, 0, 0, 1).To4()), hexIP(net.IPv6loopback)
	tcp := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: " + lo4 + ":23E7 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0\n" +
		"   1: " + lo4 + ":C350 " + lo4 + ":23E7 01 00000000:00000000 00:00000000 00000000  1337        0 2 1 0 20 4 30 10 -1\n" +
		"   2: " + lo4 + ":23E7 " + lo4 + ":C350 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 20 4 30 10 -1\n"
	tcp6 := "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: " + lo6 + ":C351 " + lo6 + ":23E7 01 00000000:00000000 00:00000000 00000000   101        0 4 1 0 20 4 30 10 -1\n"
	if err := os.WriteFile(filepath.Join(dir, "tcp"), []byte(tcp), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tcp6"), []byte(tcp6), 0o644); err != nil {
		t.Fatal(err)
	}
	server4 := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9191}
	server6 := &net.TCPAddr{IP: net.IPv6loopback, Port: 9191}
	tests := []struct {
		name          string
		local, remote *net.TCPAddr
		want          uint32
		err           string
	}{
		{"ipv4 proxy", server4, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}, 1337, ""},
		{"ipv6 proxy", server6, &net.TCPAddr{IP: net.IPv6loopback, Port: 50001}, 101, ""},
		{"unknown peer", server4, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50002}, 0, "not in tcp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			uid, err := TCPPeerUID(dir, tc.local, tc.remote)
			if uid != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("TCPPeerUID = %d, %v; want %d, %q", uid, err, tc.want, tc.err)
			}
		})
	}
}
