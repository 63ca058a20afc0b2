package main

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is what a test sees of one tar header.
type entry struct {
	Name     string
	Type     byte
	Mode     int64
	UID, GID int
	Size     int64
	ModTime  int64
}

func TestImageTarball(t *testing.T) {
	created := time.Unix(1700000000, 0).UTC()
	s := spec{
		repo: "keyshift/test",
		files: map[string]file{
			"bin":               {data: []byte("#!fake"), mode: 0o755},
			"etc/ssl/certs/ca":  {data: []byte("cert"), mode: 0o644},
			"data":              {mode: fs.ModeDir | 0o755, uid: 65532, gid: 65532},
			"/etc/passwd":       {data: []byte(passwd), mode: 0o644},
			"usr/share/zoneinf": {data: nil, mode: 0o644},
		},
		config: v1.Config{User: "65532:65532", Entrypoint: []string{"/bin"}},
	}
	digests := make([]v1.Hash, 2)
	var p string
	for i := range digests {
		img, err := build(s, created)
		if err != nil {
			t.Fatal(err)
		}
		p = filepath.Join(t.TempDir(), "test.tar")
		ref, err := write(p, s.repo, "e2e", img)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ref.String(), "keyshift/test:e2e"; got != want {
			t.Errorf("tag %q, want %q", got, want)
		}
		// Read back from the file, not from img.
		tag, err := name.NewTag("keyshift/test:e2e")
		if err != nil {
			t.Fatal(err)
		}
		back, err := tarball.ImageFromPath(p, &tag)
		if err != nil {
			t.Fatal(err)
		}
		if digests[i], err = back.Digest(); err != nil {
			t.Fatal(err)
		}
	}
	if digests[0] != digests[1] {
		t.Errorf("two builds of the same input: digests %s and %s", digests[0], digests[1])
	}

	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || cmp.Diff([]string{"keyshift/test:e2e"}, m[0].RepoTags) != "" {
		t.Errorf("manifest.json: %+v, want one image tagged keyshift/test:e2e", m)
	}

	img, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s.config, cf.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if cf.OS != "linux" || cf.Architecture == "" || !cf.Created.Time.Equal(created) {
		t.Errorf("os %q arch %q created %v", cf.OS, cf.Architecture, cf.Created)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got []entry
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, entry{h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.Size, h.ModTime.Unix()})
	}
	ts := created.Unix()
	want := []entry{
		{"bin", tar.TypeReg, 0o755, 0, 0, 6, ts},
		{"data/", tar.TypeDir, 0o755, 65532, 65532, 0, ts},
		{"etc/", tar.TypeDir, 0o755, 0, 0, 0, ts},
		{"etc/passwd", tar.TypeReg, 0o644, 0, 0, int64(len(passwd)), ts},
		{"etc/ssl/", tar.TypeDir, 0o755, 0, 0, 0, ts},
		{"etc/ssl/certs/", tar.TypeDir, 0o755, 0, 0, 0, ts},
		{"etc/ssl/certs/ca", tar.TypeReg, 0o644, 0, 0, 4, ts},
		{"usr/", tar.TypeDir, 0o755, 0, 0, 0, ts},
		{"usr/share/", tar.TypeDir, 0o755, 0, 0, 0, ts},
		{"usr/share/zoneinf", tar.TypeReg, 0o644, 0, 0, 0, ts},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("layer entries (-want +got):\n%s", diff)
	}
}

// The pause binary, built as the image builds it: it survives a SIGCHLD
// with no child to reap and exits 0 on SIGINT and on SIGTERM.
func TestPause(t *testing.T) {
	root, err := repoRoot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pause")
	if err := goBuild(context.Background(), root, "./test/images/pause", bin); err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(bin)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			time.Sleep(200 * time.Millisecond) // let it install its handlers
			_ = cmd.Process.Signal(syscall.SIGCHLD)
			select {
			case err := <-done:
				t.Fatalf("exited on SIGCHLD: %v", err)
			case <-time.After(200 * time.Millisecond):
			}
			_ = cmd.Process.Signal(sig)
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("exit after %v: %v, want status 0", sig, err)
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("still running 10s after %v", sig)
			}
		})
	}
}
