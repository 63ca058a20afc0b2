package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

// docStore is where `keyshift keyset` reads and writes one document.
type docStore interface {
	get(ctx context.Context) (*keyset.Keyset, string, error)
	put(ctx context.Context, ks *keyset.Keyset, rev string) error
	create(ctx context.Context, ks *keyset.Keyset) error
}

type fileDoc struct{ path string }

func (f fileDoc) get(context.Context) (*keyset.Keyset, string, error) {
	ks, err := keyset.ReadFile(f.path)
	return ks, "", err
}
func (f fileDoc) put(_ context.Context, ks *keyset.Keyset, _ string) error {
	return keyset.WriteFile(f.path, ks)
}
func (f fileDoc) create(_ context.Context, ks *keyset.Keyset) error {
	if _, err := os.Stat(f.path); err == nil {
		return fmt.Errorf("%s already exists; use rotate to add a version", f.path)
	}
	return keyset.WriteFile(f.path, ks)
}

type secretDoc struct {
	store *kube.SecretStore
	key   string
}

func (s secretDoc) get(ctx context.Context) (*keyset.Keyset, string, error) {
	return s.store.Get(ctx, s.key)
}
func (s secretDoc) put(ctx context.Context, ks *keyset.Keyset, rev string) error {
	_, err := s.store.Put(ctx, s.key, ks, rev)
	return err
}
func (s secretDoc) create(ctx context.Context, ks *keyset.Keyset) error {
	return s.store.Create(ctx, s.key, ks)
}

func runKeyset(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: keyshift keyset create|rotate|promote|retire|revoke|migrate-kms|show (--file PATH | --secret NAMESPACE/NAME) [flags]")
		return errUsage
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("keyset "+sub, flag.ContinueOnError)
	file := fs.String("file", "", "keyset file")
	secret := fs.String("secret", "", "keyset Secret as NAMESPACE/NAME (instead of --file)")
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig for --secret")
	var name, kmsURI *string
	var period, retention, ackTimeout *time.Duration
	var version *uint
	var reason *string
	var wait *time.Duration
	switch sub {
	case "create":
		name = fs.String("name", "", "keyset name, a DNS-1123 label (required)")
		kmsURI = fs.String("kms", "", "KMS URI of the KEK, e.g. local:///var/lib/keyshift/kek.json (required)")
		period = fs.Duration("rotation-period", 0, "controller policy: rotate when the primary is this old (0: manual only)")
		retention = fs.Duration("retention", 0, "controller policy: disable former primaries after this long (0: keep)")
		ackTimeout = fs.Duration("ack-timeout", 0, "controller policy: give up promoting after this long without every sidecar's ACK (default 5m)")
	case "promote":
		version = fs.Uint("version", 0, "pending version to promote (default: the newest pending)")
	case "retire":
		version = fs.Uint("version", 0, "version to retire: decrypt-only/revoked/pending -> disabled, disabled -> destroyed (required)")
	case "migrate-kms":
		kmsURI = fs.String("to", "", "KMS URI of the new KEK; every version is re-wrapped under it (required)")
	case "revoke":
		version = fs.Uint("version", 0, "the compromised version: it stops decrypting everywhere and stays loaded for Rewrap only (required)")
		reason = fs.String("reason", "", "why, for the audit trail and the Event")
		wait = fs.Duration("wait", 2*time.Minute, "with --secret: how long to wait for the controller to carry the revocation out")
	case "rotate", "show":
	default:
		fmt.Fprintf(stderr, "keyshift keyset: unknown subcommand %q (create, rotate, promote, retire, revoke, migrate-kms, show)\n", sub)
		return errUsage
	}
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	var store docStore
	switch {
	case *file != "" && *secret == "":
		store = fileDoc{*file}
	case *secret != "" && *file == "":
		if !strings.Contains(*secret, "/") {
			fmt.Fprintln(stderr, "--secret wants NAMESPACE/NAME")
			return errUsage
		}
		c, err := kubeClient(*kubeconfig)
		if err != nil {
			return err
		}
		store = secretDoc{&kube.SecretStore{Client: c}, *secret}
	default:
		fmt.Fprintln(stderr, "give exactly one of --file or --secret")
		return errUsage
	}
	now := time.Now()
	if sub == "create" {
		if *name == "" || *kmsURI == "" {
			fmt.Fprintln(stderr, "--name and --kms are required")
			return errUsage
		}
		if *file != "" {
			if _, err := os.Stat(filepath.Dir(*file)); err != nil {
				return err
			}
		}
		w, err := providers.Registry(nil).Open(ctx, *kmsURI)
		if err != nil {
			return err
		}
		ks, err := rotation.Create(ctx, w, *name, *kmsURI, now)
		if err != nil {
			return err
		}
		if *period != 0 || *retention != 0 || *ackTimeout != 0 {
			ks.Policy = &keyset.Policy{RotationPeriod: keyset.Duration(*period), Retention: keyset.Duration(*retention), AckTimeout: keyset.Duration(*ackTimeout)}
		}
		if err := store.create(ctx, ks); err != nil {
			return err
		}
		return show(ks, stdout)
	}
	ks, rev, err := store.get(ctx)
	if err != nil {
		return err
	}
	switch sub {
	case "show":
		return show(ks, stdout)
	case "rotate":
		w, err := providers.Registry(nil).Open(ctx, ks.KMS)
		if err != nil {
			return err
		}
		if ks, err = rotation.AddVersion(ctx, w, ks, now); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added v%d as pending: readers load it now; promote it once every reader has it\n", ks.Latest())
	case "promote":
		v := uint32(*version)
		if v == 0 {
			if v = rotation.LatestPending(ks); v == 0 {
				return errors.New("no pending version to promote (rotate first)")
			}
		}
		if ks, err = ks.Promote(v, now); err != nil {
			return err
		}
	case "migrate-kms":
		if *kmsURI == "" {
			fmt.Fprintln(stderr, "--to is required")
			return errUsage
		}
		reg := providers.Registry(nil)
		from, err := reg.Open(ctx, ks.KMS)
		if err != nil {
			return err
		}
		to, err := reg.Open(ctx, *kmsURI)
		if err != nil {
			return err
		}
		if ks, err = rotation.MigrateKMS(ctx, from, to, ks, *kmsURI); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "re-wrapped every version under %s (previousKms %s); sidecars verify each key before they accept it\n", ks.KMS, ks.PreviousKMS)
	case "revoke":
		if *version == 0 {
			fmt.Fprintln(stderr, "--version is required")
			return errUsage
		}
		return revoke(ctx, store, ks, rev, uint32(*version), *reason, *wait, now, stdout)
	case "retire":
		if *version == 0 {
			fmt.Fprintln(stderr, "--version is required")
			return errUsage
		}
		if ks, err = ks.Retire(uint32(*version), now); err != nil {
			return err
		}
	}
	if err := store.put(ctx, ks, rev); err != nil {
		return err
	}
	return show(ks, stdout)
}

// show prints versions and states, never wrapped keys.
func show(ks *keyset.Keyset, w io.Writer) error {
	fmt.Fprintf(w, "keyset %s (kms %s)\n", ks.Name, ks.KMS)
	if p := ks.Policy; p != nil {
		fmt.Fprintf(w, "  policy: rotate every %s, retain %s, ack timeout %s\n", time.Duration(p.RotationPeriod), time.Duration(p.Retention), time.Duration(p.AckTimeout))
	}
	for _, v := range ks.Versions {
		fmt.Fprintf(w, "  v%-4d %-13s kek %-6s created %s\n", v.Version, v.State, v.KEKVersion, v.CreatedAt.Format(time.RFC3339))
	}
	return nil
}

// revoke carries out `keyshift keyset revoke`. A Secret gets a request the
// leading controller carries out (a new primary pushed to every sidecar,
// a short bounded wait for their ACKs, then promote and revoke in one
// write), and the command waits for it; a file is changed at once, since
// its readers load it themselves. Then it lists who encrypted under the
// version, from the usage records the controller keeps.
func revoke(ctx context.Context, store docStore, ks *keyset.Keyset, rev string, v uint32, reason string, wait time.Duration, now time.Time, stdout io.Writer) error {
	sd, viaController := store.(secretDoc)
	if !viaController {
		w, err := providers.Registry(nil).Open(ctx, ks.KMS)
		if err != nil {
			return err
		}
		next, p, err := rotation.RevokeNow(ctx, w, ks, v, now)
		if err != nil {
			return err
		}
		if err := store.put(ctx, next, rev); err != nil {
			return err
		}
		if p != 0 {
			fmt.Fprintf(stdout, "v%d is the new primary, v%d is revoked; readers of the file load it on their next reload\n", p, v)
		} else {
			fmt.Fprintf(stdout, "v%d is revoked\n", v)
		}
		return show(next, stdout)
	}
	next, err := rotation.RequestRevoke(ks, v, reason, now)
	if err != nil {
		return err
	}
	if err := store.put(ctx, next, rev); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revocation of v%d requested; waiting up to %s for the controller\n", v, wait)
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		cur, _, err := store.get(ctx)
		if err == nil && cur.Revocation == nil {
			if got, _ := cur.Get(v); got.State != keyset.StateRevoked {
				return fmt.Errorf("the controller did not revoke v%d (it is %s): see the Events of Secret %s", v, got.State, sd.key)
			}
			fmt.Fprintf(stdout, "v%d is revoked; v%d is the primary\n", v, cur.Primary().Version)
			if err := show(cur, stdout); err != nil {
				return err
			}
			return printHolders(ctx, sd, v, stdout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the controller has not carried out the revocation of v%d within %s: is it running and leading? The request stays in Secret %s until it does", v, wait, sd.key)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// printHolders lists who encrypted under v: whose stored data to rewrap.
func printHolders(ctx context.Context, sd secretDoc, v uint32, stdout io.Writer) error {
	hs, err := sd.store.Holders(ctx, sd.key)
	if err != nil {
		return err
	}
	if len(hs[v]) == 0 {
		fmt.Fprintf(stdout, "no caller is recorded as having encrypted under v%d (records start when sidecars report usage over xDS)\n", v)
		return nil
	}
	fmt.Fprintf(stdout, "encrypted under v%d, so may hold data to rewrap (batch Rewrap, then `keyshift keyset retire --version %d`):\n", v, v)
	for _, h := range hs[v] {
		fmt.Fprintf(stdout, "  %s\n", h)
	}
	return nil
}
