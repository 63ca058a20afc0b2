package sidecar

import (
	"context"

	"github.com/keyshift/keyshift/internal/keyset"
)

// reporter is how the key sources (file, KMS poll; xDS reports through
// applyXDS, the xDS client's callback) reach the server. The server
// implements it.
type reporter interface {
	// apply builds a keyring from doc, read from source, and swaps it in;
	// changed is false for a document not newer than the loaded one. On
	// an error the running keyring is untouched.
	apply(ctx context.Context, doc *keyset.Keyset, source string) (changed bool, err error)
	// failed records why loading keyset name failed (for /readyz, Status
	// and the log).
	failed(name string, err error)
	// current is the loaded document of keyset name, or nil.
	current(name string) *keyset.Keyset
}

var _ reporter = (*Server)(nil)

// source is one running key source.
type source interface{ run(ctx context.Context) }

// sources are the file sources of the keysets that have a file, and, with
// KMSPoll, a KMS poller beside each of them. An xDS-only keyset gets no
// poller: its only action is to make a file be reread, and the controller
// pushes the rewrapped document over xDS itself.
func (s *Server) sources(names []string) []source {
	var out []source
	for _, name := range names {
		path := s.cfg.Keysets[name]
		if path == "" {
			continue
		}
		f := &fileSource{name: name, path: path, to: s, log: s.log, metrics: s.metrics, resync: s.cfg.Resync, poke: make(chan struct{}, 1)}
		out = append(out, f)
		if s.cfg.KMSPoll > 0 {
			out = append(out, &kmsPoller{name: name, from: s, file: f, loader: s.loader, interval: s.cfg.KMSPoll,
				timeout: s.cfg.KMSTimeout, log: s.log, metrics: s.metrics})
		}
	}
	return out
}

// current is the loaded document of keyset name, or nil.
func (s *Server) current(name string) *keyset.Keyset {
	if set, ok := s.ring.load().set(name); ok {
		return set.doc
	}
	return nil
}
