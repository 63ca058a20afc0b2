package main

import (
	"strings"
	"testing"
)

// TestInjectorCertModeFlags checks the certificate-mode flags are refused
// before anything starts when they contradict each other or are
// incomplete, each with a message saying what to write.
func TestInjectorCertModeFlags(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{name: "self without a namespace", args: []string{"--cert-mode=self"},
			want: "--cert-mode=self needs the injector's namespace: set POD_NAMESPACE (the manifests set it from the downward API) or --namespace"},
		{name: "self from the environment", env: map[string]string{"KEYSHIFT_CERT_MODE": "self"},
			want: "--cert-mode=self needs the injector's namespace"},
		{name: "given twice", args: []string{"--cert-mode=self", "--cert-mode=files"},
			want: `invalid value "files" for flag -cert-mode: given twice (self, then files); pick one`},
		{name: "unknown mode", args: []string{"--cert-mode=cert-manager"},
			want: `--cert-mode "cert-manager": write files or self`},
		{name: "files flag in self mode", args: []string{"--cert-mode=self", "--namespace=keyshift-system", "--tls-cert-file=/tls/tls.crt"},
			want: "--tls-cert-file is for --cert-mode=files; with --cert-mode=self the certificate comes from the Secret --tls-secret"},
		{name: "self flag in files mode", args: []string{"--tls-secret=my-tls"},
			want: "--tls-secret is for --cert-mode=self; with --cert-mode=files the certificate comes from --tls-cert-file and --tls-key-file"},
		{name: "validity checked before any API call", args: []string{"--cert-mode=self", "--namespace=keyshift-system", "--cert-validity=1h"},
			want: "certificate validity 1h0m0s is under three times the CA overlap 1h0m0s; write a --cert-validity of at least 3h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("POD_NAMESPACE", "")
			t.Setenv("KEYSHIFT_CERT_MODE", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := append([]string{"injector", "--sidecar-image=keyshift/keyshift:test", "--listen=127.0.0.1:0", "--ops-addr="}, tt.args...)
			code, _, stderr := keyshift(t, "", args...)
			if code == 0 || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want an error containing %q", code, stderr, tt.want)
			}
		})
	}
}
