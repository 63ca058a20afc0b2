// Package envelope owns keyshift's ciphertext format: a self-describing,
// authenticated header (format, keyset name, key version, seed, key
// commitment, nonce) followed by AES-256-GCM output under a per-message key
// derived from the version's data key. See SPEC.md in this folder for the
// byte layout, the key derivation and why it was chosen.
//
// The package knows nothing of KMSes or keysets: it takes a Key (a data key
// already unwrapped) and bytes.
package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"unicode/utf8"
)

// Ciphertext formats. Seal writes SealFormat; Open reads every format
// listed here.
const (
	// Format1 has no key commitment: whoever holds two data keys can craft
	// one ciphertext that opens under both. It is read, never written.
	Format1 byte = 0x01
	// Format2 adds a key commitment to the header, so a ciphertext opens
	// under one data key only.
	Format2 byte = 0x02
	// SealFormat is the format Seal writes. A ciphertext in any other
	// format is worth re-sealing (rewrapping) even under the primary
	// version.
	SealFormat = Format2
)

// Limits enforced when sealing and when parsing. They keep a hostile input
// from making the parser allocate or loop without bound.
const (
	// MaxNameLen is the longest keyset name (a DNS-1123 label).
	MaxNameLen = 63
	// MaxPlaintext is the largest plaintext one message may carry (4 MiB,
	// gRPC's default message limit).
	MaxPlaintext = 4 << 20
	// MaxContextPairs is the most context entries one message may bind.
	MaxContextPairs = 64
	// MaxContextKeyLen and MaxContextValueLen bound each context entry.
	MaxContextKeyLen   = 256
	MaxContextValueLen = 4096
	// KeySize is the data key size: 256 bits.
	KeySize = 32
	// SeedSize is the per-message random seed that selects the derived key.
	SeedSize = 32
	// CommitmentSize is the Format2 key commitment size.
	CommitmentSize = 32
	// NonceSize is the AES-GCM nonce size.
	NonceSize = 12
	// TagSize is the AES-GCM tag size.
	TagSize = 16
	// MinCiphertextLen is the shortest possible valid ciphertext of any
	// format (Format1, one-byte name, empty plaintext).
	MinCiphertextLen = 1 + 1 + 1 + 4 + SeedSize + NonceSize + TagSize
)

// Errors returned by this package. Open deliberately collapses every
// authentication failure into ErrDecrypt: the caller learns nothing about
// why, and the reason is for the caller's logs and metrics only.
var (
	// ErrMalformed: the bytes are not a well-formed keyshift ciphertext.
	ErrMalformed = errors.New("envelope: malformed ciphertext")
	// ErrUnsupportedFormat: the format byte names no format this build knows.
	ErrUnsupportedFormat = errors.New("envelope: unsupported ciphertext format")
	// ErrDecrypt: authentication failed (tampered data, wrong key or wrong
	// context). Open wraps it with the reason (key commitment or tag
	// mismatch) for logs; errors.Is(err, ErrDecrypt) holds for both.
	ErrDecrypt = errors.New("envelope: decryption failed")
	// ErrBadContext: the encryption context breaks the limits.
	ErrBadContext = errors.New("envelope: bad encryption context")
	// ErrTooLarge: the plaintext exceeds MaxPlaintext.
	ErrTooLarge = errors.New("envelope: plaintext too large")
	// ErrBadKey: the key is not KeySize bytes or the name/version are invalid.
	ErrBadKey = errors.New("envelope: bad key")
)

// HKDF labels (SPEC.md, "Keys"). One PRK per version serves every format;
// the info labels keep each derived value independent of the others.
const (
	prkSalt     = "keyshift envelope v1 prk"
	msgInfo     = "keyshift envelope v1 message key"
	msgInfo2    = "keyshift envelope v2 message key"
	commitInfo2 = "keyshift envelope v2 commitment"
	macInfo     = "keyshift mac v1"
)

// Key is one unwrapped data key version ready to seal and open messages. It
// holds the HKDF pseudorandom key derived from the DEK, never the DEK
// itself. It prints and logs as REDACTED.
type Key struct {
	name      string
	version   uint32
	prk       []byte
	macKey    []byte
	expanders sync.Pool // of *expander keyed with prk
	wiped     atomic.Bool
}

// ErrWiped: the key was wiped (its version left the keyring) and serves
// nothing more.
var ErrWiped = errors.New("envelope: key wiped")

// Wipe overwrites the key material k holds with zeros and makes every
// later use fail with ErrWiped. It is best effort: the Go runtime may have
// copied the bytes (stack growth, the HMAC states in the pool, which are
// dropped here but not zeroed), so it shortens how long a dropped key
// lingers in memory rather than guaranteeing it is gone. Call it only
// once no caller can still be using k.
func (k *Key) Wipe() {
	if k.wiped.Swap(true) {
		return
	}
	clear(k.prk)
	clear(k.macKey)
	k.expanders = sync.Pool{New: func() any { return &expander{mac: hmac.New(sha256.New, make([]byte, KeySize))} }}
}

// Wiped reports whether Wipe was called.
func (k *Key) Wiped() bool { return k.wiped.Load() }

// errIfWiped is ErrWiped, naming k, once Wipe was called.
func (k *Key) errIfWiped() error {
	if k.wiped.Load() {
		return fmt.Errorf("%w: %s v%d", ErrWiped, k.name, k.version)
	}
	return nil
}

// NewKey derives a Key for keyset name, version from a 32-byte data key.
// The caller may wipe dek afterwards.
func NewKey(name string, version uint32, dek []byte) (*Key, error) {
	if len(dek) != KeySize {
		return nil, fmt.Errorf("%w: data key is %d bytes, want %d", ErrBadKey, len(dek), KeySize)
	}
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if version == 0 {
		return nil, fmt.Errorf("%w: version 0 is reserved", ErrBadKey)
	}
	prk, err := hkdf.Extract(sha256.New, dek, []byte(prkSalt))
	if err != nil {
		return nil, fmt.Errorf("envelope: derive key: %w", err)
	}
	macKey, err := hkdf.Expand(sha256.New, prk, macInfo, KeySize)
	if err != nil {
		return nil, fmt.Errorf("envelope: derive MAC key: %w", err)
	}
	k := &Key{name: name, version: version, prk: prk, macKey: macKey}
	k.expanders.New = func() any { return &expander{mac: hmac.New(sha256.New, k.prk)} }
	return k, nil
}

// MAC returns HMAC-SHA-256 over data under a MAC key derived from the
// version's data key (HKDF label "keyshift mac v1"), independent of every
// message key. It is for signing requests and cookies, not for ciphertexts.
func (k *Key) MAC(data []byte) []byte {
	if k.wiped.Load() {
		return nil // VerifyMAC then fails: no MAC is empty
	}
	m := hmac.New(sha256.New, k.macKey)
	m.Write(data)
	return m.Sum(nil)
}

// VerifyMAC reports in constant time whether mac is MAC(data).
func (k *Key) VerifyMAC(data, mac []byte) bool {
	m := k.MAC(data)
	return m != nil && hmac.Equal(m, mac)
}

// Name is the keyset name this key seals under.
func (k *Key) Name() string { return k.name }

// Version is the key version this key seals under.
func (k *Key) Version() uint32 { return k.version }

// String never shows key material.
func (k *Key) String() string { return fmt.Sprintf("envelope.Key{%s v%d REDACTED}", k.name, k.version) }

// LogValue never shows key material.
func (k *Key) LogValue() slog.Value {
	return slog.GroupValue(slog.String("keyset", k.name), slog.Any("version", k.version), slog.String("key", "REDACTED"))
}

// ValidateName checks a keyset name: 1..63 bytes of [a-z0-9-], starting and
// ending with an alphanumeric (a DNS-1123 label, so it can name a Secret).
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > MaxNameLen {
		return fmt.Errorf("%w: keyset name must be 1..%d characters, got %d", ErrBadKey, MaxNameLen, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if !alnum && (c != '-' || i == 0 || i == len(name)-1) {
			return fmt.Errorf("%w: keyset name %q must be lowercase letters, digits and inner '-' (a DNS-1123 label)", ErrBadKey, name)
		}
	}
	return nil
}

// Header is the authenticated, cleartext part of a ciphertext. Parse and
// AppendBinary are exact inverses: the byte layout (SPEC.md) is written
// only there.
type Header struct {
	Format  byte
	Keyset  string
	Version uint32
	Seed    [SeedSize]byte
	// Commitment commits the ciphertext to one data key (Format2); it is
	// all zero in a Format1 header.
	Commitment [CommitmentSize]byte
	Nonce      [NonceSize]byte
}

// headerLen is the header size of format for a keyset name of nameLen
// bytes, or 0 for an unknown format.
func headerLen(format byte, nameLen int) int {
	switch format {
	case Format1:
		return 1 + 1 + nameLen + 4 + SeedSize + NonceSize
	case Format2:
		return 1 + 1 + nameLen + 4 + SeedSize + CommitmentSize + NonceSize
	}
	return 0
}

// AppendBinary appends the encoded header to b (encoding.BinaryAppender).
// It refuses a header Parse would refuse, and a Format1 header with a
// commitment, which that format cannot carry.
func (h Header) AppendBinary(b []byte) ([]byte, error) {
	if headerLen(h.Format, 0) == 0 {
		return nil, fmt.Errorf("%w: format byte 0x%02x", ErrUnsupportedFormat, h.Format)
	}
	if err := ValidateName(h.Keyset); err != nil {
		return nil, err
	}
	if h.Version == 0 {
		return nil, fmt.Errorf("%w: version 0 is reserved", ErrBadKey)
	}
	if h.Format == Format1 && h.Commitment != [CommitmentSize]byte{} {
		return nil, fmt.Errorf("%w: format 0x01 carries no commitment", ErrMalformed)
	}
	b = slices.Grow(b, headerLen(h.Format, len(h.Keyset)))
	b = append(b, h.Format, byte(len(h.Keyset)))
	b = append(b, h.Keyset...)
	b = binary.BigEndian.AppendUint32(b, h.Version)
	b = append(b, h.Seed[:]...)
	if h.Format == Format2 {
		b = append(b, h.Commitment[:]...)
	}
	return append(b, h.Nonce[:]...), nil
}

// headerNonce is the nonce within an encoded header: its last field in
// every format. Seal and Open take it from the bytes rather than from a
// Header, which would escape to the heap through the AEAD interface.
func headerNonce(header []byte) []byte { return header[len(header)-NonceSize:] }

// Parse reads the header of ciphertext without decrypting. It checks every
// length against the limits and never allocates more than the input size.
// It returns the header and the offset where the AEAD output starts.
func Parse(ciphertext []byte) (Header, int, error) {
	var h Header
	if len(ciphertext) < 1 {
		return h, 0, fmt.Errorf("%w: empty", ErrMalformed)
	}
	h.Format = ciphertext[0]
	if headerLen(h.Format, 0) == 0 {
		return h, 0, fmt.Errorf("%w: format byte 0x%02x", ErrUnsupportedFormat, h.Format)
	}
	if len(ciphertext) < MinCiphertextLen {
		return h, 0, fmt.Errorf("%w: %d bytes is shorter than the minimum %d", ErrMalformed, len(ciphertext), MinCiphertextLen)
	}
	n := int(ciphertext[1])
	if n == 0 || n > MaxNameLen {
		return h, 0, fmt.Errorf("%w: keyset name length %d", ErrMalformed, n)
	}
	hlen := headerLen(h.Format, n)
	if len(ciphertext) < hlen+TagSize {
		return h, 0, fmt.Errorf("%w: truncated", ErrMalformed)
	}
	if len(ciphertext) > hlen+MaxPlaintext+TagSize {
		return h, 0, fmt.Errorf("%w: %d bytes exceeds the maximum", ErrMalformed, len(ciphertext))
	}
	off := 2
	name := string(ciphertext[off : off+n])
	if err := ValidateName(name); err != nil {
		return h, 0, fmt.Errorf("%w: invalid keyset name", ErrMalformed)
	}
	h.Keyset = name
	off += n
	h.Version = binary.BigEndian.Uint32(ciphertext[off:])
	if h.Version == 0 {
		return h, 0, fmt.Errorf("%w: key version 0", ErrMalformed)
	}
	off += 4
	off += copy(h.Seed[:], ciphertext[off:])
	if h.Format == Format2 {
		off += copy(h.Commitment[:], ciphertext[off:])
	}
	off += copy(h.Nonce[:], ciphertext[off:])
	return h, off, nil
}

// MaxCiphertextLen is the largest ciphertext of any format for a keyset
// name of nameLen bytes.
func MaxCiphertextLen(nameLen int) int {
	return headerLen(SealFormat, nameLen) + MaxPlaintext + TagSize
}

// Overhead is the number of bytes Seal adds to a plaintext for a keyset
// name of nameLen bytes.
func Overhead(nameLen int) int { return headerLen(SealFormat, nameLen) + TagSize }

// Seal encrypts plaintext under k in SealFormat, binding the header and the
// canonical form of context as associated data. rand supplies the seed and
// nonce, in that order (crypto/rand.Reader in production; fixed bytes only
// for test vectors).
func Seal(k *Key, plaintext []byte, context map[string]string, rand io.Reader) ([]byte, error) {
	return seal(k, SealFormat, plaintext, context, rand)
}

// seal is Seal in a chosen format; Format1 only for its test vectors and
// benchmark baseline.
func seal(k *Key, format byte, plaintext []byte, context map[string]string, rand io.Reader) ([]byte, error) {
	s := Sealer{k: k, format: format, rand: rand}
	return s.Seal(plaintext, context)
}

// SeedMessages is the most messages one seed seals: a Sealer draws a new
// seed after that many (SPEC.md, "Batches").
const SeedMessages = 1024

// Sealer seals the messages of one batch under one seed, so they share
// one message key and commitment and each has its own random nonce: the
// HKDF, the AES key schedule and their allocations are paid once per
// seed instead of once per message. A seed seals at most SeedMessages
// messages, then the Sealer draws a new one. The ciphertexts are in
// SealFormat and open with Open like any other. A Sealer is for one
// goroutine and one call; NewSealer is cheap.
type Sealer struct {
	k      *Key
	format byte
	rand   io.Reader
	multi  bool        // keep prefix for the next message
	prefix []byte      // the header before the nonce, for the current seed
	aead   cipher.AEAD // the current seed's message AEAD
	left   int         // messages the current seed may still seal
	ad     []byte      // associated data buffer, reused
}

// NewSealer returns a Sealer for k; rand supplies seeds and nonces
// (crypto/rand.Reader in production).
func NewSealer(k *Key, rand io.Reader) *Sealer {
	return &Sealer{k: k, format: SealFormat, rand: rand, multi: true}
}

// Key is the key s seals under.
func (s *Sealer) Key() *Key { return s.k }

// Seal encrypts plaintext as Seal does, under the Sealer's current seed.
func (s *Sealer) Seal(plaintext []byte, context map[string]string) ([]byte, error) {
	hlen := headerLen(s.format, len(s.k.name))
	if hlen == 0 {
		return nil, fmt.Errorf("%w: format byte 0x%02x", ErrUnsupportedFormat, s.format)
	}
	if len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrTooLarge, len(plaintext), MaxPlaintext)
	}
	out := make([]byte, hlen, hlen+len(plaintext)+TagSize)
	if s.left == 0 {
		if err := s.reseed(out); err != nil {
			return nil, err
		}
	} else {
		if err := s.k.errIfWiped(); err != nil {
			return nil, err
		}
		copy(out, s.prefix)
		if _, err := io.ReadFull(s.rand, headerNonce(out)); err != nil {
			return nil, fmt.Errorf("envelope: read random: %w", err)
		}
	}
	s.left--
	ad, err := associatedData(s.ad, out, context)
	if err != nil {
		return nil, err
	}
	if s.multi {
		s.ad = ad
	}
	return s.aead.Seal(out, headerNonce(out), plaintext, ad), nil
}

// reseed draws a seed and the next nonce in one read, seed first (the
// order the test vectors fix), derives the seed's message AEAD and
// commitment, and writes the whole header into out.
func (s *Sealer) reseed(out []byte) error {
	// The random bytes pass through out, which the header then overwrites.
	random := out[:SeedSize+NonceSize]
	if _, err := io.ReadFull(s.rand, random); err != nil {
		return fmt.Errorf("envelope: read random: %w", err)
	}
	h := Header{Format: s.format, Keyset: s.k.name, Version: s.k.version}
	copy(h.Seed[:], random[:SeedSize])
	copy(h.Nonce[:], random[SeedSize:])
	aead, err := s.k.messageAEAD(s.format, h.Seed[:], &h.Commitment)
	if err != nil {
		return err
	}
	if _, err := h.AppendBinary(out[:0]); err != nil {
		return err
	}
	s.aead, s.left = aead, SeedMessages
	if s.multi {
		s.prefix = append(s.prefix[:0], out[:len(out)-NonceSize]...)
	}
	return nil
}

// Open decrypts ciphertext with k. The ciphertext's keyset and version must
// be k's: look the key up with Parse first. Every authentication failure,
// a Format2 key commitment that is not k's included, returns ErrDecrypt.
func Open(k *Key, ciphertext []byte, context map[string]string) ([]byte, error) {
	var o Opener
	return o.Open(k, ciphertext, context)
}

// Opener opens the ciphertexts of one batch. Ciphertexts in a row under
// the same key and seed (a Sealer's batch) share one message key, which it
// derives once; every ciphertext's commitment, tag and context are still
// checked on its own. An Opener is for one goroutine and one call; the
// zero value is ready.
type Opener struct {
	k          *Key
	format     byte
	seed       [SeedSize]byte
	commitment [CommitmentSize]byte
	aead       cipher.AEAD // nil: nothing derived yet
	ad         []byte      // associated data buffer, reused
}

// Open decrypts ciphertext with k as the package's Open does.
func (o *Opener) Open(k *Key, ciphertext []byte, context map[string]string) ([]byte, error) {
	h, off, err := Parse(ciphertext)
	if err != nil {
		return nil, err
	}
	if h.Keyset != k.name || h.Version != k.version {
		return nil, fmt.Errorf("%w: ciphertext is for %s v%d, key is %s v%d", ErrBadKey, h.Keyset, h.Version, k.name, k.version)
	}
	if o.aead == nil || o.k != k || o.format != h.Format || o.seed != h.Seed {
		o.aead = nil
		var commitment [CommitmentSize]byte
		aead, err := k.messageAEAD(h.Format, h.Seed[:], &commitment)
		if err != nil {
			return nil, err
		}
		o.k, o.format, o.seed, o.commitment, o.aead = k, h.Format, h.Seed, commitment, aead
	} else if err := k.errIfWiped(); err != nil {
		return nil, err
	}
	// Before any AEAD work: a ciphertext committed to another data key must
	// not reach GCM. Both values are all zero for Format1.
	if subtle.ConstantTimeCompare(o.commitment[:], h.Commitment[:]) != 1 {
		return nil, fmt.Errorf("%w: key commitment mismatch", ErrDecrypt)
	}
	ad, err := associatedData(o.ad, ciphertext[:off], context)
	if err != nil {
		return nil, err
	}
	o.ad = ad
	pt, err := o.aead.Open(nil, headerNonce(ciphertext[:off]), ciphertext[off:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: authentication tag mismatch", ErrDecrypt)
	}
	return pt, nil
}

// messageAEAD derives the message AEAD for seed in format and, for
// Format2, the key commitment into commitment (left all zero for Format1).
func (k *Key) messageAEAD(format byte, seed []byte, commitment *[CommitmentSize]byte) (cipher.AEAD, error) {
	if err := k.errIfWiped(); err != nil {
		return nil, err
	}
	var mk [KeySize]byte
	e := k.expanders.Get().(*expander)
	switch format {
	case Format1:
		e.expand(&mk, msgInfo, seed)
	case Format2:
		e.expand(&mk, msgInfo2, seed)
		e.expand(commitment, commitInfo2, seed)
	default:
		k.expanders.Put(e)
		return nil, fmt.Errorf("%w: format byte 0x%02x", ErrUnsupportedFormat, format)
	}
	k.expanders.Put(e)
	block, err := aes.NewCipher(mk[:])
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return cipher.NewGCM(block)
}

// expander computes HKDF-Expand(PRK, label || seed, 32), a single HMAC
// block T(1) = HMAC(PRK, label || seed || 0x01), with a pooled HMAC and
// buffers so the hot path allocates nothing for it (TestMessageKeyIsHKDF
// checks it against crypto/hkdf).
type expander struct {
	mac hash.Hash // HMAC-SHA-256 keyed with the PRK
	in  []byte
	out [sha256.Size]byte
}

func (e *expander) expand(out *[32]byte, label string, seed []byte) {
	e.in = append(append(append(e.in[:0], label...), seed...), 1)
	e.mac.Reset()
	e.mac.Write(e.in)
	*out = [32]byte(e.mac.Sum(e.out[:0]))
	clear(e.out[:])
}

// associatedData is header || CanonicalContext(context), built in buf's
// storage when it is large enough.
func associatedData(buf, header []byte, context map[string]string) ([]byte, error) {
	return appendCanonicalContext(append(slices.Grow(buf[:0], len(header)+64), header...), context)
}

// CanonicalContext encodes context as bound into the associated data: a
// 2-byte big-endian count, then for each entry in byte-wise sorted key
// order a 2-byte key length, the key, a 2-byte value length, the value.
// Keys must be non-empty; keys and values must be valid UTF-8 within the
// limits. An empty or nil map encodes as the two bytes 0x00 0x00.
func CanonicalContext(context map[string]string) ([]byte, error) {
	return appendCanonicalContext(nil, context)
}

func appendCanonicalContext(out []byte, context map[string]string) ([]byte, error) {
	if len(context) > MaxContextPairs {
		return nil, fmt.Errorf("%w: %d entries exceeds %d", ErrBadContext, len(context), MaxContextPairs)
	}
	var keyBuf [8]string
	keys := keyBuf[:0]
	size := 2
	for k, v := range context {
		switch {
		case k == "":
			return nil, fmt.Errorf("%w: empty key", ErrBadContext)
		case len(k) > MaxContextKeyLen:
			return nil, fmt.Errorf("%w: key of %d bytes exceeds %d", ErrBadContext, len(k), MaxContextKeyLen)
		case len(v) > MaxContextValueLen:
			return nil, fmt.Errorf("%w: value for key %q of %d bytes exceeds %d", ErrBadContext, k, len(v), MaxContextValueLen)
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			return nil, fmt.Errorf("%w: keys and values must be UTF-8", ErrBadContext)
		}
		keys = append(keys, k)
		size += 4 + len(k) + len(v)
	}
	sort.Strings(keys)
	out = slices.Grow(out, size)
	out = binary.BigEndian.AppendUint16(out, uint16(len(keys)))
	for _, k := range keys {
		out = binary.BigEndian.AppendUint16(out, uint16(len(k)))
		out = append(out, k...)
		v := context[k]
		out = binary.BigEndian.AppendUint16(out, uint16(len(v)))
		out = append(out, v...)
	}
	return out, nil
}
