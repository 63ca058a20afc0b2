// Package sidecarcmd is the sidecar's command line, shared by `keyshift
// sidecar` and the lean `keyshift-sidecar` binary that pods run.
package sidecarcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/podspec"
	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/internal/sidecar/extauthz"
	"github.com/keyshift/keyshift/internal/xds/wire"
)

// keysetFlags collects repeated --keyset NAME=PATH.
type keysetFlags map[string]string

func (k keysetFlags) String() string { return fmt.Sprint(map[string]string(k)) }
func (k keysetFlags) Set(v string) error {
	name, path, ok := strings.Cut(v, "=")
	if name == "" || (ok && path == "") {
		return fmt.Errorf("want NAME=PATH, for example payments=/var/run/keyshift/keysets/payments/keyset.json, or NAME alone for a keyset that comes over xDS only")
	}
	if _, dup := k[name]; dup {
		return fmt.Errorf("keyset %q given twice", name)
	}
	k[name] = path
	return nil
}

// ParseUIDs reads --allowed-uids: "self" (the sidecar's own UID), "any"
// (no check: the socket's file mode decides) or a comma-separated list.
func ParseUIDs(s string) ([]uint32, error) {
	switch s {
	case "self":
		return []uint32{uint32(os.Getuid())}, nil
	case "any":
		return nil, nil
	}
	var out []uint32
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--allowed-uids %q: write self, any, or comma-separated numeric UIDs like 1000,1001", s)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// Run parses the sidecar's flags and serves until ctx ends; with
// bench-floor first it serves the load tool's floor instead (BenchFloor).
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "bench-floor" {
		return BenchFloor(ctx, args[1:], stdin, stdout, stderr)
	}
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	keysets := keysetFlags{}
	fs.Var(keysets, "keyset", "NAME=PATH of a keyset file to serve and follow, or NAME for xDS only (repeat for several)")
	xdsAddr := fs.String("xds-addr", "", "the controller's xDS address (host:port); keysets are then also pushed by the controller")
	nodeID := fs.String("node-id", nodeIDFromEnv(), "this sidecar's name to the controller (default $POD_NAMESPACE/$POD_NAME)")
	xdsCA := fs.String("xds-ca-file", "", "PEM bundle the controller's xDS certificate must chain to (the keyshift-xds-ca ConfigMap the injector mounts)")
	xdsServer := fs.String("xds-server-name", "", "DNS name the controller's xDS certificate must carry, e.g. keyshift-controller.keyshift-system.svc")
	xdsToken := fs.String("xds-token-file", "", "the pod's projected ServiceAccount token for the controller (audience keyshift.io/xds)")
	xdsInsecure := fs.Bool("xds-insecure", false, "no TLS and no token: only for a controller on loopback or a Unix socket")
	socket := fs.String("socket", clikit.EnvOr(podspec.SocketEnv, podspec.Socket), "Unix socket to serve the API on")
	mode := fs.String("socket-mode", "0660", "socket file mode (octal)")
	uids := fs.String("allowed-uids", "self", "peer UIDs allowed to call: self, any, or a list like 1000,1001")
	metrics := fs.String("metrics-addr", fmt.Sprintf("127.0.0.1:%d", podspec.OpsPort), "address for /livez, /readyz and /metrics (empty disables)")
	resync := fs.Duration("resync", time.Minute, "reread keyset files this often even without a file event")
	kmsTimeout := fs.Duration("kms-timeout", 10*time.Second, "timeout of each KMS call")
	kmsPoll := fs.Duration("kms-poll", 5*time.Minute, "ask the KMS for the KEK's primary version this often; reread the keyset when it changes (0 disables)")
	authzAddr := fs.String("ext-authz-addr", "", "loopback host:port to serve Envoy ext_authz on, e.g. 127.0.0.1:9191 (empty disables)")
	authzSocket := fs.String("ext-authz-socket", "", "Unix socket to serve Envoy ext_authz on, e.g. /var/run/keyshift/extauthz.sock (empty disables)")
	authzPolicy := fs.String("ext-authz-policy", "", "ext_authz policy file, YAML or JSON (required when ext_authz is on; see examples/extauthz-policy.yaml)")
	authzUIDs := fs.String("ext-authz-allowed-uids", "", "peer UIDs allowed to call ext_authz (required with ext_authz): a list like 1337 (Istio's proxy) or 101 (Envoy's image), self, or any")
	logger := clikit.LogFlags(fs, "info", "debug, info, warn or error")
	if err := clikit.Parse(fs, args, stderr); err != nil {
		return err
	}
	log, err := logger(stderr)
	if err != nil {
		return err
	}
	if err := harden(); err != nil {
		return err
	}
	logRuntime(log, memlimit.FromCgroup)
	m, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil || m > 0o777 {
		return fmt.Errorf("--socket-mode %q: write an octal mode like 0660", *mode)
	}
	allowed, err := ParseUIDs(*uids)
	if err != nil {
		return err
	}
	var authz extauthz.Config
	if *authzAddr != "" || *authzSocket != "" {
		if *authzPolicy == "" {
			return fmt.Errorf("--ext-authz-addr/--ext-authz-socket need --ext-authz-policy FILE (see examples/extauthz-policy.yaml)")
		}
		p, err := extauthz.LoadPolicy(*authzPolicy)
		if err != nil {
			return err
		}
		if *authzUIDs == "" {
			// No default: "any" would let every process that can reach the
			// port ask for decisions, and a guess would lock out the proxy.
			return fmt.Errorf("--ext-authz-allowed-uids is required with ext_authz: name the proxy's UID (1337 for Istio, 101 for Envoy's image), or self, or any")
		}
		u, err := ParseUIDs(*authzUIDs)
		if err != nil {
			return fmt.Errorf("--ext-authz-allowed-uids: %w", err)
		}
		authz = extauthz.Config{Addr: *authzAddr, Socket: *authzSocket, SocketMode: os.FileMode(m), AllowedUIDs: u, Policy: p, Logger: log}
	}
	return serve(ctx, sidecar.Config{
		Socket: *socket, SocketMode: os.FileMode(m), AllowedUIDs: allowed, Keysets: keysets,
		MetricsAddr: *metrics, KMS: providers.Registry(log), Logger: log, Resync: *resync, KMSTimeout: *kmsTimeout,
		XDSAddr: *xdsAddr, NodeID: *nodeID, KMSPoll: *kmsPoll,
		XDSCAFile: *xdsCA, XDSServerName: *xdsServer, XDSTokenFile: *xdsToken, XDSInsecure: *xdsInsecure,
	}, authz)
}

// serve runs the socket API and, when authz is enabled, ext_authz over
// the same keyring, until ctx is canceled. Either failing to start stops
// both.
func serve(ctx context.Context, cfg sidecar.Config, authz extauthz.Config) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv, err := sidecar.Start(ctx, cfg)
	if err != nil {
		return err
	}
	authz.Registry = srv.Metrics().Registry
	authz.PeerRefused = func() { srv.Metrics().PeerRejected("extauthz") }
	az, err := extauthz.Start(ctx, authz, srv.Service())
	if err != nil {
		cancel()
		_ = srv.Wait()
		return err
	}
	err = srv.Wait()
	az.Wait()
	return err
}

// logRuntime sets the collector (sidecar.TuneRuntime) and says what it
// chose; a memory limit it cannot read is a warning, not a failure: the
// sidecar then runs with GOGC alone.
func logRuntime(log *slog.Logger, limit memlimit.Provider) {
	rt, err := sidecar.TuneRuntime(limit)
	if err != nil {
		log.Warn("no soft memory limit", "err", err)
	}
	log.Info("go runtime", "gogc", rt.GCPercent, "gogc_from_env", rt.GCFromEnv, "memory_limit_bytes", rt.MemoryLimit, "memory_limit_from", rt.MemoryLimitFrom)
}

// BenchFloor serves the load tool's like-for-like floor (the sidecar's
// own server without the crypto, sidecar.ServeFloor) on the socket path
// given as its argument, until ctx ends. `keyshift bench` starts it as
// `keyshift-sidecar bench-floor SOCKET` from the sidecar's own binary, so
// the floor differs from the sidecar only by its handlers: same build,
// same package state, same collector settings.
func BenchFloor(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: bench-floor SOCKET")
		return clikit.ErrUsage
	}
	if _, err := sidecar.TuneRuntime(memlimit.FromCgroup); err != nil {
		fmt.Fprintf(stderr, "bench-floor: %v (running without a soft memory limit)\n", err)
	}
	wait, err := sidecar.ServeFloor(ctx, args[0])
	if err != nil {
		return err
	}
	wait()
	return nil
}

func nodeIDFromEnv() string {
	ns, pod := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME")
	if ns != "" && pod != "" {
		return wire.NodeID(ns, pod)
	}
	return pod
}
