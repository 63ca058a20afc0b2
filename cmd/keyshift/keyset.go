package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/rotation"
)

func runKeyset(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: keyshift keyset create|rotate|promote|retire|show --file PATH [flags]")
		return errUsage
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("keyset "+sub, flag.ContinueOnError)
	file := fs.String("file", "", "keyset file (required)")
	var name, kmsURI *string
	var version *uint
	switch sub {
	case "create":
		name = fs.String("name", "", "keyset name, a DNS-1123 label (required)")
		kmsURI = fs.String("kms", "", "KMS URI of the KEK, e.g. local:///var/lib/keyshift/kek.json (required)")
	case "promote":
		version = fs.Uint("version", 0, "pending version to promote (default: the newest pending)")
	case "retire":
		version = fs.Uint("version", 0, "version to retire: decrypt-only/pending -> disabled, disabled -> destroyed (required)")
	case "rotate", "show":
	default:
		fmt.Fprintf(stderr, "keyshift keyset: unknown subcommand %q (create, rotate, promote, retire, show)\n", sub)
		return errUsage
	}
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if *file == "" {
		fmt.Fprintln(stderr, "--file is required")
		return errUsage
	}
	now := time.Now()
	if sub == "create" {
		if *name == "" || *kmsURI == "" {
			fmt.Fprintln(stderr, "--name and --kms are required")
			return errUsage
		}
		if _, err := os.Stat(*file); err == nil {
			return fmt.Errorf("%s already exists; use rotate to add a version", *file)
		}
		w, err := providers.Registry().Open(ctx, *kmsURI)
		if err != nil {
			return err
		}
		ks, err := rotation.Create(ctx, w, *name, *kmsURI, now)
		if err != nil {
			return err
		}
		return writeAndShow(*file, ks, stdout)
	}
	ks, err := keyset.ReadFile(*file)
	if err != nil {
		return err
	}
	switch sub {
	case "show":
		return show(ks, stdout)
	case "rotate":
		w, err := providers.Registry().Open(ctx, ks.KMS)
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
	case "retire":
		if *version == 0 {
			fmt.Fprintln(stderr, "--version is required")
			return errUsage
		}
		if ks, err = ks.Retire(uint32(*version), now); err != nil {
			return err
		}
	}
	return writeAndShow(*file, ks, stdout)
}

func writeAndShow(path string, ks *keyset.Keyset, w io.Writer) error {
	if err := keyset.WriteFile(path, ks); err != nil {
		return err
	}
	return show(ks, w)
}

// show prints versions and states, never wrapped keys.
func show(ks *keyset.Keyset, w io.Writer) error {
	fmt.Fprintf(w, "keyset %s (kms %s)\n", ks.Name, ks.KMS)
	for _, v := range ks.Versions {
		fmt.Fprintf(w, "  v%-4d %-13s kek %-6s created %s\n", v.Version, v.State, v.KEKVersion, v.CreatedAt.Format(time.RFC3339))
	}
	return nil
}
