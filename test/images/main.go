// Command images builds the container images the end-to-end cluster runs,
// from this repository's source, without a container engine, and writes
// each as a docker-archive tarball that `ctr -n k8s.io images import` loads:
//
//	go run ./test/images -out DIR [-tag e2e] [-only keyshift,pause,...]
//
//	keyshift/keyshift:TAG    the Dockerfile's runtime image (/keyshift, /keyshift-sidecar)
//	keyshift/example-app:TAG examples/app as /app
//	keyshift/pause:TAG       the pod sandbox process (test/images/pause)
//	keyshift/local-kms:TAG   the AWS KMS API server from scripts/install-local-kms.sh
//	keyshift/coredns:TAG     the cluster DNS from scripts/coredns-build.sh
//
// Binaries are built as the Dockerfile builds them (CGO_ENABLED=0,
// -trimpath, -ldflags="-s -w"); timestamps are $SOURCE_DATE_EPOCH or 0, so
// the same source gives the same digests.
package main

import (
	"context"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const passwd = "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n"

func main() {
	out := flag.String("out", "", "directory to write the image tarballs into (required)")
	tag := flag.String("tag", "e2e", "tag for every image")
	only := flag.String("only", "", "comma-separated images to write (default all: "+strings.Join(imageNames, ",")+")")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *out, *tag, *only); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, tag, only string) error {
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if !slices.Contains(imageNames, n) {
			return fmt.Errorf("-only: no image %q (have %s)", n, strings.Join(imageNames, ", "))
		}
		want[n] = true
	}
	created, err := epoch()
	if err != nil {
		return err
	}
	root, err := repoRoot(ctx)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	specs, err := specs(ctx, root, want)
	if err != nil {
		return err
	}
	for _, s := range specs {
		img, err := build(s, created)
		if err != nil {
			return err
		}
		p := filepath.Join(out, filepath.Base(s.repo)+".tar")
		ref, err := write(p, s.repo, tag, img)
		if err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		id, err := img.ConfigName()
		if err != nil {
			return err
		}
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		fmt.Printf("%s\tid %s\tmanifest %s\t%d bytes\t%s\n", ref, id, digest, st.Size(), p)
	}
	return nil
}

// imageNames are the images the command writes, in order.
var imageNames = []string{"keyshift", "example-app", "pause", "local-kms", "coredns"}

// specs builds the binaries and lays out the images named in only (all
// when only is empty).
func specs(ctx context.Context, root string, only map[string]bool) ([]spec, error) {
	tmp, err := os.MkdirTemp("", "keyshift-images")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bin := func(dir, pkg string) ([]byte, error) {
		o := filepath.Join(tmp, "bin")
		if err := goBuild(ctx, filepath.Join(root, dir), pkg, o); err != nil {
			return nil, err
		}
		return os.ReadFile(o)
	}
	builders := map[string]func() (spec, error){
		"keyshift": func() (spec, error) {
			ks, err := bin(".", "./cmd/keyshift")
			if err != nil {
				return spec{}, err
			}
			sidecar, err := bin(".", "./cmd/keyshift-sidecar")
			if err != nil {
				return spec{}, err
			}
			certs, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
			if err != nil {
				return spec{}, fmt.Errorf("CA certificates for the keyshift image: %w", err)
			}
			return spec{
				repo: "keyshift/keyshift",
				files: map[string]file{
					"keyshift":                          {data: ks, mode: 0o755},
					"keyshift-sidecar":                  {data: sidecar, mode: 0o755},
					"etc/ssl/certs/ca-certificates.crt": {data: certs, mode: 0o644},
					"etc/passwd":                        {data: []byte(passwd), mode: 0o644},
				},
				config: v1.Config{User: "65532:65532", Entrypoint: []string{"/keyshift"}},
			}, nil
		},
		"example-app": func() (spec, error) {
			app, err := bin("examples/app", ".")
			return spec{
				repo:   "keyshift/example-app",
				files:  map[string]file{"app": {data: app, mode: 0o755}},
				config: v1.Config{User: "1000:1000", Entrypoint: []string{"/app"}},
			}, err
		},
		"pause": func() (spec, error) {
			pause, err := bin(".", "./test/images/pause")
			return spec{
				repo:   "keyshift/pause",
				files:  map[string]file{"pause": {data: pause, mode: 0o755}},
				config: v1.Config{User: "65535:65535", Entrypoint: []string{"/pause"}},
			}, err
		},
		"local-kms": func() (spec, error) {
			kms, err := cachedStatic("local-kms", "scripts/install-local-kms.sh")
			return spec{
				repo: "keyshift/local-kms",
				files: map[string]file{
					"local-kms":  {data: kms, mode: 0o755},
					"etc/passwd": {data: []byte(passwd), mode: 0o644},
					"data":       {mode: fs.ModeDir | 0o755, uid: 65532, gid: 65532}, // KMS_DATA_PATH
					"init":       {mode: fs.ModeDir | 0o755},                         // seed.yaml goes here
				},
				config: v1.Config{
					User:         "65532:65532",
					Entrypoint:   []string{"/local-kms"},
					Env:          []string{"PORT=8080", "KMS_DATA_PATH=/data", "KMS_SEED_PATH=/init/seed.yaml"},
					ExposedPorts: map[string]struct{}{"8080/tcp": {}},
				},
			}, err
		},
		"coredns": func() (spec, error) {
			dns, err := cachedStatic("coredns", "scripts/coredns-build.sh")
			return spec{
				repo:   "keyshift/coredns",
				files:  map[string]file{"coredns": {data: dns, mode: 0o755}},
				config: v1.Config{User: "65532:65532", Entrypoint: []string{"/coredns"}},
			}, err
		},
	}
	var out []spec
	for _, name := range imageNames {
		if len(only) > 0 && !only[name] {
			continue
		}
		s, err := builders[name]()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// goBuild builds pkg in the module at dir the way the Dockerfile does.
func goBuild(ctx context.Context, dir, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "-C", dir, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=-buildvcs=false")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s in %s: %w\n%s", pkg, dir, err, b)
	}
	return nil
}

// cachedStatic reads a binary a build script put in KEYSHIFT_BIN,
// refusing a dynamically linked one: the image has no libc.
func cachedStatic(name, install string) ([]byte, error) {
	dir := os.Getenv("KEYSHIFT_BIN")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, err
		}
		dir = filepath.Join(home, ".cache", "keyshift", "bin")
	}
	p := filepath.Join(dir, name)
	f, err := elf.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no %s at %s: run %s (or set KEYSHIFT_BIN to its directory)", name, p, install)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s is dynamically linked and cannot run on scratch: rebuild it with CGO_ENABLED=0 (rm it and run %s)", p, install)
		}
	}
	return os.ReadFile(p)
}

// repoRoot is the directory of the keyshift module enclosing the working
// directory.
func repoRoot(ctx context.Context) (string, error) {
	b, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(b))
	if err != nil || mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run from inside the keyshift module (go env GOMOD: %q, %v)", mod, err)
	}
	if gm, err := os.ReadFile(mod); err != nil || !strings.HasPrefix(string(gm), "module github.com/keyshift/keyshift\n") {
		return "", fmt.Errorf("run from inside the keyshift module, not %s", mod)
	}
	return filepath.Dir(mod), nil
}

// epoch is $SOURCE_DATE_EPOCH, or the Unix epoch when unset.
func epoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
	}
	return time.Unix(n, 0).UTC(), nil
}
