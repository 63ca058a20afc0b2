package client

import (
	"path/filepath"
	"testing"
)

// Dial picks the socket as every keyshift client does: the path given,
// else $KEYSHIFT_SOCKET, else the injector's default.
func TestDialChoosesTheSocket(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, path, env, want string
	}{
		{"path", filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock"), "unix://" + filepath.Join(dir, "a.sock")},
		{"env", "", filepath.Join(dir, "b.sock"), "unix://" + filepath.Join(dir, "b.sock")},
		{"default", "", "", "unix://" + DefaultSocket},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(EnvSocket, c.env)
			cl, err := Dial(c.path)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if got := cl.conn.Target(); got != c.want {
				t.Fatalf("target = %q, want %q", got, c.want)
			}
		})
	}
	if DefaultSocket != "/var/run/keyshift/keyshift.sock" {
		t.Fatalf("DefaultSocket = %q, not where the injector mounts the socket", DefaultSocket)
	}
}
