package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// --cluster picks the cluster view wherever it is among the flags, and is
// not passed on; without it (or after "--") status talks to the socket.
func TestWithoutClusterFlag(t *testing.T) {
	for _, c := range []struct {
		args    []string
		rest    []string
		cluster bool
	}{
		{nil, nil, false},
		{[]string{"--socket", "/s"}, []string{"--socket", "/s"}, false},
		{[]string{"--cluster"}, []string{}, true},
		{[]string{"-A", "--cluster", "-o", "json"}, []string{"-A", "-o", "json"}, true},
		{[]string{"-cluster=true", "-n", "shop"}, []string{"-n", "shop"}, true},
		{[]string{"--cluster=false", "--ready"}, []string{"--ready"}, false},
		{[]string{"--", "--cluster"}, []string{"--", "--cluster"}, false},
	} {
		in := append([]string(nil), c.args...)
		rest, cluster := withoutClusterFlag(c.args)
		if cluster != c.cluster {
			t.Errorf("%q: cluster = %v, want %v", c.args, cluster, c.cluster)
		}
		if diff := cmp.Diff(c.rest, rest); diff != "" {
			t.Errorf("%q: rest (-want +got):\n%s", c.args, diff)
		}
		if diff := cmp.Diff(in, c.args); diff != "" {
			t.Errorf("%q: the caller's args were changed (-want +got):\n%s", in, diff)
		}
	}
}
