package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// file is one entry of an image's single layer. A directory has fs.ModeDir
// in mode and no data; everything is owned by root unless uid/gid say.
type file struct {
	data     []byte
	mode     fs.FileMode
	uid, gid int
}

// spec describes one image: a repository without a registry host (the
// container runtime defaults it) and a scratch filesystem of one layer.
type spec struct {
	repo   string // e.g. "keyshift/keyshift"
	files  map[string]file
	config v1.Config
}

// layerTar writes files as an uncompressed tar with every parent directory
// present, entries sorted, and every timestamp set to mtime, so equal
// inputs give equal bytes.
func layerTar(files map[string]file, mtime time.Time) ([]byte, error) {
	all := map[string]file{}
	for p, f := range files {
		p = strings.Trim(path.Clean("/"+p), "/")
		if p == "" {
			return nil, fmt.Errorf("layer: empty path")
		}
		all[p] = f
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = file{mode: fs.ModeDir | 0o755}
			}
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range slices.Sorted(maps.Keys(all)) {
		f := all[p]
		h := &tar.Header{
			Name: p, Mode: int64(f.mode.Perm()), Uid: f.uid, Gid: f.gid,
			ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.data)),
		}
		if f.mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if f.mode.IsDir() {
			if len(f.data) != 0 {
				return nil, fmt.Errorf("layer: directory %s has data", p)
			}
			h.Name, h.Typeflag = p+"/", tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", p, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// build makes a linux image for this machine's architecture: one layer on
// scratch, s.config, and every timestamp at created.
func build(s spec, created time.Time) (v1.Image, error) {
	b, err := layerTar(s.files, created)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.repo, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("%s: layer: %w", s.repo, err)
	}
	t := v1.Time{Time: created}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: t, CreatedBy: "keyshift test/images", Comment: s.repo},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.repo, err)
	}
	cf, err := img.ConfigFile() // carries the layer's diff ID and history
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.repo, err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Created, cf.Config = runtime.GOARCH, "linux", t, s.config
	return mutate.ConfigFile(img, cf)
}

// write saves img as a docker-archive tarball (manifest.json, config,
// layers) at p, tagged repo:tag. The tag has no registry host: the name
// package and the container runtime both default it, so the kubelet finds
// the image by the same short name a pod spec uses.
func write(p, repo, tag string, img v1.Image) (name.Tag, error) {
	ref, err := name.NewTag(repo + ":" + tag)
	if err != nil {
		return name.Tag{}, err
	}
	if err := tarball.WriteToFile(p, ref, img); err != nil {
		return name.Tag{}, fmt.Errorf("write %s: %w", p, err)
	}
	return ref, nil
}
