package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

// controllerAuditFlags are the controller's audit trail flags, for
// controller.Config.
type controllerAuditFlags struct {
	log, kms, keySecret, keyFile string
}

func addAuditFlags(fs *flag.FlagSet) *controllerAuditFlags {
	f := &controllerAuditFlags{}
	fs.StringVar(&f.log, "audit-log", "/var/lib/keyshift/audit.jsonl", "a local copy of every audit record this replica stores (JSON lines; empty: none). The reference trail is in each keyset's Secret, and each record is logged whole (audit_record)")
	fs.StringVar(&f.kms, "audit-kms", "", "KMS URI of a key only the controller's identity may use: the audit key is kept wrapped under it. Empty: the audit key is kept unwrapped (in --audit-key-secret, or --audit-key-file outside a cluster)")
	fs.StringVar(&f.keySecret, "audit-key-secret", controller.DefaultAuditKeySecret, "Secret in the controller's namespace keeping the audit key (created on first start)")
	fs.StringVar(&f.keyFile, "audit-key-file", "", "with --keyset-dir: the file keeping the audit key (default: "+controller.AuditKeyFileName+" beside --audit-log)")
	return f
}

// heads are --head KEYSET=SEQ:MAC values.
type heads map[string]audit.Head

func (h heads) String() string { return "" }

func (h heads) Set(v string) error {
	ks, head, ok := strings.Cut(v, "=")
	hd, err := audit.ParseHead(head)
	if !ok || ks == "" || err != nil || hd.IsZero() {
		return fmt.Errorf("--head %q: write KEYSET=SEQ:MAC, e.g. shop/payments=7:3f2a... (the keyset's %s annotation)", v, kube.AuditHeadAnnotation)
	}
	h[ks] = hd
	return nil
}

func runAudit(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprintln(stderr, "usage: keyshift audit verify (--secret NAMESPACE/NAME | --keyset-dir DIR | --file PATH) [flags]")
		return errUsage
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	secret := fs.String("secret", "", "verify the trail kept in this keyset Secret, NAMESPACE/NAME (its records and head)")
	dir := fs.String("keyset-dir", "", "verify the trail of every keyset in this directory (a controller's --keyset-dir)")
	file := fs.String("file", "", "verify a JSON-lines file of records: a controller's --audit-log, or records exported from its logs (the audit_record field), in order; with --secret, --keyset-dir or --head its tail is checked against those heads")
	hs := heads{}
	fs.Var(hs, "head", "with --file: KEYSET=SEQ:MAC, the head the keyset's records must end at (repeatable)")
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig (default: in-cluster config), for --secret and the audit key Secret")
	keySecret := fs.String("audit-key-secret", "keyshift-system/"+controller.DefaultAuditKeySecret, "the Secret keeping the audit key, NAMESPACE/NAME")
	keyFile := fs.String("audit-key-file", "", "the file keeping the audit key (a controller's --audit-key-file); default with --file: "+controller.AuditKeyFileName+" beside it when there, else --audit-key-secret")
	auditKMS := fs.String("audit-kms", "", "require the audit key to be wrapped under this KMS key (the controller's --audit-kms): a key swapped for another is refused")
	if err := parse(fs, args[1:], stderr); err != nil {
		return err
	}
	if *secret == "" && *dir == "" && *file == "" {
		fmt.Fprintln(stderr, "give --secret, --keyset-dir or --file")
		return errUsage
	}
	if *secret != "" && !strings.Contains(*secret, "/") {
		fmt.Fprintln(stderr, "--secret wants NAMESPACE/NAME")
		return errUsage
	}
	var f *os.File
	if *file != "" {
		var err error
		if f, err = os.Open(*file); err != nil {
			return err
		}
		defer f.Close()
	}
	var client kubernetes.Interface
	kubeClientOnce := func() (kubernetes.Interface, error) {
		if client != nil {
			return client, nil
		}
		c, err := kubeClient(*kubeconfig)
		client = c
		return c, err
	}
	var h audit.KeyHolder
	switch beside := filepath.Join(filepath.Dir(*file), controller.AuditKeyFileName); {
	case *keyFile != "":
		h = audit.KeyFile{Path: *keyFile}
	case *file != "" && *secret == "" && exists(beside):
		h = audit.KeyFile{Path: beside}
	case *dir != "":
		fmt.Fprintf(stderr, "with --keyset-dir, give --audit-key-file (the controller's; by default %s beside its --audit-log)\n", controller.AuditKeyFileName)
		return errUsage
	default:
		ns, name, ok := strings.Cut(*keySecret, "/")
		if !ok {
			fmt.Fprintln(stderr, "--audit-key-secret wants NAMESPACE/NAME")
			return errUsage
		}
		c, err := kubeClientOnce()
		if err != nil {
			return err
		}
		h = kube.AuditKeySecret{Client: c, Namespace: ns, Name: name}
	}
	key, info, err := audit.OpenKey(ctx, h, providers.Registry(nil), *auditKMS)
	if err != nil {
		return err
	}
	if info.KMS == "" {
		fmt.Fprintf(stderr, "note: the audit key (%s) is kept unwrapped in %s: this proves the trail intact only against those who cannot read it\n", info.ID, h)
	}

	var trails []rotation.StoredTrail
	var names []string
	switch {
	case *secret != "":
		c, err := kubeClientOnce()
		if err != nil {
			return err
		}
		st, err := (&kube.SecretStore{Client: c}).AuditTrail(ctx, *secret)
		if err != nil {
			return err
		}
		trails, names = append(trails, st), append(names, "Secret "+*secret)
	case *dir != "":
		store := &rotation.FileStore{Dir: *dir}
		keys, err := store.List(ctx)
		if err != nil {
			return err
		}
		for _, k := range keys {
			st, err := store.AuditTrail(ctx, k)
			if err != nil {
				return err
			}
			trails, names = append(trails, st), append(names, store.TrailPath(k))
		}
	}
	for i, st := range trails {
		tr, err := key.VerifyStored(st.Keyset, st.Records, st.Head)
		if err != nil {
			return fmt.Errorf("%s: %w", names[i], err)
		}
		hs[st.Keyset] = tr.Head
		if len(tr.Records) > 0 {
			fmt.Fprintf(stdout, "%s: keyset %s, records %d..%d (head %d), chain intact (audit key %s)\n", names[i], st.Keyset, tr.Records[0].Seq, tr.Head.Seq, tr.Head.Seq, info.ID)
		} else {
			fmt.Fprintf(stdout, "%s: keyset %s, no records yet\n", names[i], st.Keyset)
		}
	}
	if f != nil {
		sum, err := audit.VerifyLog(f, key, hs)
		if err != nil {
			return fmt.Errorf("%s: %w", *file, err)
		}
		tails := "no head given: the tail is not checked (add --secret, --keyset-dir or --head)"
		if len(hs) > 0 {
			tails = "each keyset's last record is the head"
		}
		fmt.Fprintf(stdout, "%s: %d records of %d keysets, chain intact (audit key %s); %s\n", *file, sum.Records, len(sum.Last), info.ID, tails)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
