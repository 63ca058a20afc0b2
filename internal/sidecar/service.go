package sidecar

import (
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/sidecar/cryptoapi"
)

// Service is the sidecar's crypto core as plain Go: the gRPC and HTTP
// handlers only convert types and call it. It reads the current Keyring
// once per call and never blocks on a key swap.
type Service struct {
	ring     *holder
	keysets  []string // configured keyset names, sorted
	rand     io.Reader
	metrics  *Metrics
	log      *slog.Logger
	required map[string]bool
	usage    *usage // nil: not recorded
}

func newService(ring *holder, keysets []string, m *Metrics, log *slog.Logger) *Service {
	ks := append([]string(nil), keysets...)
	sort.Strings(ks)
	req := map[string]bool{}
	for _, k := range ks {
		req[k] = true
	}
	return &Service{ring: ring, keysets: ks, rand: rand.Reader, metrics: m, log: log, required: req, usage: newUsage(time.Now())}
}

func (s *Service) observe(op string, start time.Time, err error) {
	s.metrics.observe(op, time.Since(start), err)
	if err != nil && cryptoapi.Reason(err) == "internal" {
		s.log.Error("request failed", "op", op, "err", err)
	}
}

// Encrypt seals plaintext under the primary version of keyset (or of the
// only keyset when name is empty).
func (s *Service) Encrypt(ctx context.Context, name string, plaintext []byte, c map[string]string) (res cryptoapi.Sealed, err error) {
	start := time.Now()
	defer func() { s.observe("encrypt", start, err) }()
	res, err = s.encrypt(nil, name, plaintext, c)
	t := s.tally(ctx)
	t.seal(name, res, err)
	t.flush()
	return res, err
}

// tally collects one call's usage records and hands them to the usage
// table in runs of the same key and result, so a batch under one version
// takes the table's lock once, not once per item.
type tally struct {
	u      *usage
	uid    int64
	k      usageKey
	reason string
	n      uint64
}

func (s *Service) tally(ctx context.Context) tally { return tally{u: s.usage, uid: callerUID(ctx)} }

func (t *tally) add(k usageKey, reason string) {
	if t.n > 0 && (k != t.k || reason != t.reason) {
		t.flush()
	}
	t.k, t.reason = k, reason
	t.n++
}

func (t *tally) flush() {
	t.u.addN(t.k, t.reason, t.n)
	t.n = 0
}

// seal counts an encrypt by the version it sealed under.
func (t *tally) seal(name string, res cryptoapi.Sealed, err error) {
	k := usageKey{peer: t.uid, keyset: cmp.Or(res.Keyset, name), version: res.Version, op: "encrypt"}
	t.add(k, cryptoapi.Reason(err))
}

// open counts a decrypt or a rewrap by the version it opened, which a
// failed one knows only from the ciphertext: the header is parsed again
// only on failure, off the hot path.
func (t *tally) open(op string, ciphertext []byte, keyset string, version uint32, err error) {
	if err != nil {
		keyset, version = keyOf(ciphertext)
	}
	t.add(usageKey{peer: t.uid, keyset: keyset, version: version, op: op}, cryptoapi.Reason(err))
}

func (s *Service) encrypt(b *batchCrypto, name string, plaintext []byte, c map[string]string) (cryptoapi.Sealed, error) {
	set, err := s.lookup(name)
	if err != nil {
		return cryptoapi.Sealed{}, err
	}
	ct, err := b.seal(set.primary, plaintext, c, s.rand)
	if err != nil {
		return cryptoapi.Sealed{}, err
	}
	return cryptoapi.Sealed{Ciphertext: ct, Keyset: set.primary.Name(), Version: set.primary.Version()}, nil
}

func (s *Service) lookup(name string) (*ringSet, error) {
	if name == "" {
		if len(s.keysets) != 1 {
			return nil, fmt.Errorf("%w: this sidecar serves %d keysets (%v); name one", cryptoapi.ErrKeysetRequired, len(s.keysets), s.keysets)
		}
		name = s.keysets[0]
	}
	set, ok := s.ring.load().set(name)
	if !ok {
		if s.required[name] {
			return nil, fmt.Errorf("%w: keyset %q", cryptoapi.ErrNotReady, name)
		}
		return nil, fmt.Errorf("%w %q (this sidecar serves %v)", cryptoapi.ErrUnknownKeyset, name, s.keysets)
	}
	return set, nil
}

// Decrypt opens a ciphertext under whichever loaded version sealed it,
// unless that version is revoked (cryptoapi.ErrRevoked): Rewrap moves such data.
func (s *Service) Decrypt(ctx context.Context, ciphertext []byte, c map[string]string) (res cryptoapi.Opened, err error) {
	start := time.Now()
	defer func() { s.observe("decrypt", start, err) }()
	res, err = s.decrypt(nil, ciphertext, c)
	t := s.tally(ctx)
	t.open("decrypt", ciphertext, res.Keyset, res.Version, err)
	t.flush()
	return res, err
}

func (s *Service) decrypt(b *batchCrypto, ciphertext []byte, c map[string]string) (cryptoapi.Opened, error) {
	set, k, _, err := s.keyFor(ciphertext)
	if err != nil {
		return cryptoapi.Opened{}, err
	}
	if set.revoked[k.Version()] {
		return cryptoapi.Opened{}, revokedVersion(k.Name(), k.Version())
	}
	pt, err := b.openWith(k, ciphertext, c)
	if err != nil {
		return cryptoapi.Opened{}, err
	}
	return cryptoapi.Opened{Plaintext: pt, Keyset: k.Name(), Version: k.Version()}, nil
}

// keyFor finds the loaded key the ciphertext's header names, revoked ones
// included, and the keyset it belongs to, from one keyring snapshot.
func (s *Service) keyFor(ciphertext []byte) (*ringSet, *envelope.Key, envelope.Header, error) {
	h, _, err := envelope.Parse(ciphertext)
	if err != nil {
		return nil, nil, h, err
	}
	set, err := s.lookup(h.Keyset)
	if err != nil {
		return nil, nil, h, err
	}
	k, ok := set.keys[h.Version]
	if !ok {
		return nil, nil, h, unknownVersion(h.Keyset, h.Version)
	}
	return set, k, h, nil
}

// Rewrap re-seals ciphertext under its keyset's primary version without
// handing the plaintext to anyone. A ciphertext already under the primary
// is returned as it is, with Rewrapped false. A ciphertext under a revoked
// version is rewrapped too: that is how its data is moved to a key that is
// not compromised.
func (s *Service) Rewrap(ctx context.Context, ciphertext []byte, c map[string]string) (res cryptoapi.Sealed, err error) {
	start := time.Now()
	defer func() { s.observe("rewrap", start, err) }()
	res, err = s.rewrap(nil, ciphertext, c)
	t := s.tally(ctx)
	t.open("rewrap", ciphertext, res.Keyset, res.FromVersion, err)
	t.flush()
	return res, err
}

func (s *Service) rewrap(b *batchCrypto, ciphertext []byte, c map[string]string) (cryptoapi.Sealed, error) {
	set, k, h, err := s.keyFor(ciphertext)
	if err != nil {
		return cryptoapi.Sealed{}, err
	}
	pt, err := b.openWith(k, ciphertext, c)
	if err != nil {
		return cryptoapi.Sealed{}, err
	}
	defer clear(pt)
	// Under the primary and in the format Seal writes: nothing to do. A
	// Format1 ciphertext (not key-committing) is resealed even under the
	// primary, so Rewrap moves old data to Format2.
	if set.primary.Version() == k.Version() && h.Format == envelope.SealFormat {
		return cryptoapi.Sealed{Ciphertext: ciphertext, Keyset: k.Name(), Version: k.Version(), FromVersion: k.Version()}, nil
	}
	ct, err := b.seal(set.primary, pt, c, s.rand)
	if err != nil {
		return cryptoapi.Sealed{}, err
	}
	return cryptoapi.Sealed{Ciphertext: ct, Keyset: k.Name(), Version: set.primary.Version(), FromVersion: k.Version(), Rewrapped: true}, nil
}

// EncryptItem, DecryptItem and RewrapItem are one batch entry.
type (
	EncryptItem struct {
		Keyset    string
		Plaintext []byte
		Context   map[string]string
	}
	CipherItem struct {
		Ciphertext []byte
		Context    map[string]string
	}
)

// EncryptBatch encrypts each item independently; errs[i] is item i's error.
func (s *Service) EncryptBatch(ctx context.Context, items []EncryptItem) (out []cryptoapi.Sealed, errs []error, err error) {
	start := time.Now()
	defer func() { s.observe("encrypt_batch", start, err) }()
	if err := checkBatch(len(items)); err != nil {
		return nil, nil, err
	}
	out, errs = make([]cryptoapi.Sealed, len(items)), make([]error, len(items))
	t := s.tally(ctx)
	var b batchCrypto
	for i, it := range items {
		out[i], errs[i] = s.encrypt(&b, it.Keyset, it.Plaintext, it.Context)
		t.seal(it.Keyset, out[i], errs[i])
	}
	t.flush()
	s.metrics.batchItems("encrypt_batch", errs)
	return out, errs, nil
}

// DecryptBatch decrypts each item independently.
func (s *Service) DecryptBatch(ctx context.Context, items []CipherItem) (out []cryptoapi.Opened, errs []error, err error) {
	start := time.Now()
	defer func() { s.observe("decrypt_batch", start, err) }()
	if err := checkBatch(len(items)); err != nil {
		return nil, nil, err
	}
	out, errs = make([]cryptoapi.Opened, len(items)), make([]error, len(items))
	t := s.tally(ctx)
	var b batchCrypto
	for i, it := range items {
		out[i], errs[i] = s.decrypt(&b, it.Ciphertext, it.Context)
		t.open("decrypt", it.Ciphertext, out[i].Keyset, out[i].Version, errs[i])
	}
	t.flush()
	s.metrics.batchItems("decrypt_batch", errs)
	return out, errs, nil
}

// RewrapBatch rewraps each item independently.
func (s *Service) RewrapBatch(ctx context.Context, items []CipherItem) (out []cryptoapi.Sealed, errs []error, err error) {
	start := time.Now()
	defer func() { s.observe("rewrap_batch", start, err) }()
	if err := checkBatch(len(items)); err != nil {
		return nil, nil, err
	}
	out, errs = make([]cryptoapi.Sealed, len(items)), make([]error, len(items))
	t := s.tally(ctx)
	var b batchCrypto
	for i, it := range items {
		out[i], errs[i] = s.rewrap(&b, it.Ciphertext, it.Context)
		t.open("rewrap", it.Ciphertext, out[i].Keyset, out[i].FromVersion, errs[i])
	}
	t.flush()
	s.metrics.batchItems("rewrap_batch", errs)
	return out, errs, nil
}

// batchCrypto seals and opens the items of one batch call: one envelope.Sealer per
// key, so the items sealed under a key share a seed (envelope.SeedMessages
// at most) and pay for its message key once, and one envelope.Opener
// that derives a message key once for a run of items under one seed. nil
// seals and opens each message on its own, as a unary call does.
type batchCrypto struct {
	sealers []*envelope.Sealer
	open    envelope.Opener
}

func (b *batchCrypto) openWith(k *envelope.Key, ciphertext []byte, c map[string]string) ([]byte, error) {
	if b == nil {
		return envelope.Open(k, ciphertext, c)
	}
	return b.open.Open(k, ciphertext, c)
}

func (b *batchCrypto) seal(k *envelope.Key, plaintext []byte, c map[string]string, rand io.Reader) ([]byte, error) {
	if b == nil {
		return envelope.Seal(k, plaintext, c, rand)
	}
	for _, s := range b.sealers {
		if s.Key() == k {
			return s.Seal(plaintext, c)
		}
	}
	s := envelope.NewSealer(k, rand)
	b.sealers = append(b.sealers, s)
	return s.Seal(plaintext, c)
}

func checkBatch(n int) error {
	if n > cryptoapi.MaxBatch {
		return fmt.Errorf("%w: %d items exceeds %d; split the batch", cryptoapi.ErrBatchTooLarge, n, cryptoapi.MaxBatch)
	}
	return nil
}

// KeysetStatus describes one loaded keyset. It holds no key material.
type KeysetStatus struct {
	Name      string
	KMS       string
	Primary   uint32
	Versions  []VersionStatus
	LoadedAt  time.Time
	Source    string
	LastError string
}

// VersionStatus is one version's number, state and KEK version.
type VersionStatus struct {
	Version    uint32
	State      string
	KEKVersion string
}

// Status lists every configured keyset; Ready is true when all are loaded.
func (s *Service) Status(lastErr func(string) string) (ready bool, out []KeysetStatus) {
	ring := s.ring.load()
	ready = true
	for _, name := range s.keysets {
		st := KeysetStatus{Name: name}
		if lastErr != nil {
			st.LastError = lastErr(name)
		}
		set, ok := ring.set(name)
		if !ok {
			ready = false
			out = append(out, st)
			continue
		}
		st.KMS, st.Primary, st.LoadedAt, st.Source = set.doc.KMS, set.primary.Version(), set.loadedAt, set.source
		for _, v := range set.doc.Versions {
			st.Versions = append(st.Versions, VersionStatus{Version: v.Version, State: string(v.State), KEKVersion: v.KEKVersion})
		}
		out = append(out, st)
	}
	return ready, out
}

// Ready reports whether every configured keyset is loaded.
func (s *Service) Ready() bool {
	ring := s.ring.load()
	for _, name := range s.keysets {
		if _, ok := ring.set(name); !ok {
			return false
		}
	}
	return true
}

// Sign MACs data under the primary version of keyset (see
// envelope.Key.MAC) and reports that version, so a verifier can pick the
// same one later even after a rotation.
func (s *Service) Sign(ctx context.Context, keyset string, data []byte) (version uint32, mac []byte, err error) {
	start := time.Now()
	defer func() { s.observe("sign", start, err) }()
	set, err := s.lookup(keyset)
	if err != nil {
		return 0, nil, err
	}
	return set.primary.Version(), set.primary.MAC(data), nil
}

// Verify checks a MAC made by Sign under version of keyset. Any decryptable
// version verifies (pending, primary, decrypt-only), so MACs made before a
// rotation stay valid through the retention window; a revoked one does not
// (cryptoapi.ErrRevoked), since whoever holds its key can forge MACs under it.
func (s *Service) Verify(ctx context.Context, keyset string, version uint32, data, mac []byte) (err error) {
	start := time.Now()
	defer func() { s.observe("verify", start, err) }()
	set, err := s.lookup(keyset)
	if err != nil {
		return err
	}
	k, ok := set.keys[version]
	if !ok {
		return unknownVersion(set.doc.Name, version)
	}
	if set.revoked[version] {
		return revokedVersion(set.doc.Name, version)
	}
	if !k.VerifyMAC(data, mac) {
		return cryptoapi.ErrBadMAC
	}
	return nil
}

// Primary is keyset's primary version number.
func (s *Service) Primary(keyset string) (uint32, error) {
	set, err := s.lookup(keyset)
	if err != nil {
		return 0, err
	}
	return set.primary.Version(), nil
}

// Keysets names the keysets this sidecar serves, sorted.
func (s *Service) Keysets() []string { return append([]string(nil), s.keysets...) }
