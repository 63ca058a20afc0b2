package envelope

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

type vector struct {
	Comment    string            `json:"comment"`
	DEK        string            `json:"dek"`
	Keyset     string            `json:"keyset"`
	Version    uint32            `json:"version"`
	Seed       string            `json:"seed,omitempty"`
	Nonce      string            `json:"nonce,omitempty"`
	Context    map[string]string `json:"context,omitempty"`
	OpenWith   map[string]string `json:"open_context,omitempty"`
	Plaintext  string            `json:"plaintext,omitempty"`
	Ciphertext string            `json:"ciphertext"`
	Error      string            `json:"error,omitempty"`
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func errName(err error) string {
	for _, e := range []error{ErrMalformed, ErrUnsupportedFormat, ErrDecrypt, ErrBadContext, ErrBadKey, ErrTooLarge} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	if err == nil {
		return ""
	}
	return "unexpected: " + err.Error()
}

func fixedKey(t testing.TB, name string, v uint32) *Key {
	dek := bytes.Repeat([]byte{byte(v)}, KeySize)
	k, err := NewKey(name, v, dek)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// generateVectors builds the vector set from fixed inputs; -update writes
// it. The Format1 vectors come first and must not change: they are what
// sidecars wrote before Format2 and still read.
func generateVectors(t *testing.T) []vector {
	dek := make([]byte, KeySize)
	for i := range dek {
		dek[i] = byte(i)
	}
	otherDEK := bytes.Repeat([]byte{0xEE}, KeySize)
	seed := bytes.Repeat([]byte{0xA5}, SeedSize)
	nonce := bytes.Repeat([]byte{0x5A}, NonceSize)
	rnd := func() *bytes.Reader { return bytes.NewReader(append(append([]byte{}, seed...), nonce...)) }
	k, err := NewKey("payments", 7, dek)
	if err != nil {
		t.Fatal(err)
	}
	base := vector{DEK: hex.EncodeToString(dek), Keyset: "payments", Version: 7, Seed: hex.EncodeToString(seed), Nonce: hex.EncodeToString(nonce)}
	var vs []vector
	add := func(format byte, comment string, pt []byte, c map[string]string) string {
		ct, err := seal(k, format, pt, c, rnd())
		if err != nil {
			t.Fatal(err)
		}
		v := base
		v.Comment, v.Plaintext, v.Context, v.Ciphertext = comment, hex.EncodeToString(pt), c, hex.EncodeToString(ct)
		vs = append(vs, v)
		return v.Ciphertext
	}
	neg := func(comment, ct string, open map[string]string, want error) *vector {
		v := base
		v.Comment, v.Ciphertext, v.OpenWith, v.Error = comment, ct, open, want.Error()
		v.Seed, v.Nonce = "", ""
		vs = append(vs, v)
		return &vs[len(vs)-1]
	}
	flip := func(s string, i int) string {
		b, _ := hex.DecodeString(s)
		b[i] ^= 0x01
		return hex.EncodeToString(b)
	}
	ctx := map[string]string{"tenant": "acme", "table": "users", "ünï": "cödé"}
	kib := bytes.Repeat([]byte("0123456789abcdef"), 64)

	// Format1: hex offsets below count two characters a byte.
	add(Format1, "empty plaintext, no context", nil, nil)
	good := add(Format1, "short plaintext with context", []byte("hello, keyshift"), ctx)
	add(Format1, "1 KiB plaintext", kib, map[string]string{"a": ""})
	neg("wrong context value", good, map[string]string{"tenant": "evil", "table": "users", "ünï": "cödé"}, ErrDecrypt)
	neg("context missing", good, nil, ErrDecrypt)
	neg("flipped seed byte", flip(good, 2+8+4), ctx, ErrDecrypt)
	neg("flipped nonce byte", flip(good, 2+8+4+SeedSize), ctx, ErrDecrypt)
	neg("flipped tag byte", flip(good, len(good)/2-1), ctx, ErrDecrypt)
	neg("unsupported format", "03"+good[2:], ctx, ErrUnsupportedFormat)
	neg("truncated", good[:40], ctx, ErrMalformed)
	neg("name length zero", good[:2]+"00"+good[4:], ctx, ErrMalformed)
	neg("name length past end", good[:2]+"ff"+good[4:], ctx, ErrMalformed)
	neg("uppercase name", good[:4]+hex.EncodeToString([]byte("PAYMENTS"))+good[4+16:], ctx, ErrMalformed)
	neg("version zero", good[:4+16]+"00000000"+good[4+16+8:], ctx, ErrMalformed)

	// Format2: the key-committing format Seal writes.
	add(Format2, "format 2: empty plaintext, no context", nil, nil)
	good2 := add(Format2, "format 2: short plaintext with context", []byte("hello, keyshift"), ctx)
	add(Format2, "format 2: 1 KiB plaintext", kib, map[string]string{"a": ""})
	seedOff, commitOff := 2+8+4, 2+8+4+SeedSize
	nonceOff := commitOff + CommitmentSize
	neg("format 2: wrong context value", good2, map[string]string{"tenant": "evil", "table": "users", "ünï": "cödé"}, ErrDecrypt)
	neg("format 2: flipped seed byte", flip(good2, seedOff), ctx, ErrDecrypt)
	neg("format 2: flipped commitment byte", flip(good2, commitOff), ctx, ErrDecrypt)
	neg("format 2: flipped nonce byte", flip(good2, nonceOff), ctx, ErrDecrypt)
	neg("format 2: flipped tag byte", flip(good2, len(good2)/2-1), ctx, ErrDecrypt)
	neg("format 2: other data key, same keyset and version", good2, ctx, ErrDecrypt).DEK = hex.EncodeToString(otherDEK)
	neg("format 2 relabelled as format 1", "01"+good2[2:], ctx, ErrDecrypt)
	neg("format 1 relabelled as format 2", "02"+good[2:], ctx, ErrMalformed)
	neg("format 2: one byte short of an empty message", good2[:2*(nonceOff+NonceSize+TagSize-1)], ctx, ErrMalformed)
	return vs
}

func TestVectors(t *testing.T) {
	path := filepath.Join("testdata", "vectors.json")
	if *update {
		b, err := json.MarshalIndent(generateVectors(t), "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	formats := map[byte]int{}
	for _, v := range vs {
		if v.Error == "" {
			formats[mustHex(t, v.Ciphertext)[0]]++
		}
	}
	if diff := cmp.Diff(map[byte]int{Format1: 3, Format2: 3}, formats); diff != "" {
		t.Fatalf("positive vectors per format (-want +got):\n%s", diff)
	}
	if len(vs) < 10 {
		t.Fatalf("only %d vectors in %s", len(vs), path)
	}
	for i, v := range vs {
		t.Run(fmt.Sprintf("%02d_%s", i, strings.ReplaceAll(v.Comment, " ", "_")), func(t *testing.T) {
			k, err := NewKey(v.Keyset, v.Version, mustHex(t, v.DEK))
			if err != nil {
				t.Fatal(err)
			}
			ct := mustHex(t, v.Ciphertext)
			if v.Error != "" {
				pt, err := Open(k, ct, v.OpenWith)
				if got := errName(err); got != v.Error {
					t.Fatalf("Open error = %q, want %q", got, v.Error)
				}
				if pt != nil {
					t.Fatalf("Open returned %d bytes alongside an error", len(pt))
				}
				return
			}
			rnd := bytes.NewReader(append(mustHex(t, v.Seed), mustHex(t, v.Nonce)...))
			got, err := seal(k, ct[0], mustHex(t, v.Plaintext), v.Context, rnd)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(v.Ciphertext, hex.EncodeToString(got)); diff != "" {
				t.Fatalf("Seal differs from vector (-want +got):\n%s", diff)
			}
			pt, err := Open(k, ct, v.Context)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(v.Plaintext, hex.EncodeToString(pt)); diff != "" {
				t.Fatalf("Open (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRoundTripAndHeader(t *testing.T) {
	k := fixedKey(t, "orders", 3)
	pt := []byte("secret")
	ctx := map[string]string{"user": "42"}
	ct, err := Seal(k, pt, ctx, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(ct), len(pt)+Overhead(len("orders")); got != want {
		t.Fatalf("len = %d, want %d", got, want)
	}
	h, off, err := Parse(ct)
	if err != nil {
		t.Fatal(err)
	}
	if h.Keyset != "orders" || h.Version != 3 || h.Format != SealFormat || off != len(ct)-len(pt)-TagSize {
		t.Fatalf("header = %+v off %d", h, off)
	}
	if h.Commitment == [CommitmentSize]byte{} {
		t.Fatal("Seal wrote no key commitment")
	}
	got, err := Open(k, ct, ctx)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	ct2, _ := Seal(k, pt, ctx, rand.Reader)
	if bytes.Equal(ct, ct2) {
		t.Fatal("two seals of the same plaintext are equal")
	}
}

// Every single-bit flip anywhere in a ciphertext must fail to open.
func TestEveryBitFlipFails(t *testing.T) {
	k := fixedKey(t, "orders", 3)
	ct, err := Seal(k, []byte("attack at dawn"), map[string]string{"a": "b"}, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ct {
		for bit := 0; bit < 8; bit++ {
			c := bytes.Clone(ct)
			c[i] ^= 1 << bit
			pt, err := Open(k, c, map[string]string{"a": "b"})
			if err == nil || pt != nil {
				t.Fatalf("flip byte %d bit %d: opened (%q, %v)", i, bit, pt, err)
			}
		}
	}
}

func TestOpenWrongKey(t *testing.T) {
	ct, err := Seal(fixedKey(t, "orders", 3), []byte("x"), nil, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewKey("orders", 3, bytes.Repeat([]byte{9}, KeySize))
	if _, err := Open(other, ct, nil); !errors.Is(err, ErrDecrypt) || !strings.Contains(err.Error(), "commitment") {
		t.Fatalf("same name/version, other DEK: err = %v, want ErrDecrypt for the key commitment", err)
	}
	if _, err := Open(fixedKey(t, "orders", 4), ct, nil); !errors.Is(err, ErrBadKey) {
		t.Fatalf("other version: err = %v, want ErrBadKey", err)
	}
}

func TestCanonicalContext(t *testing.T) {
	a, _ := CanonicalContext(map[string]string{"a": "bc"})
	b, _ := CanonicalContext(map[string]string{"ab": "c"})
	if bytes.Equal(a, b) {
		t.Fatal("encoding is not injective")
	}
	e1, _ := CanonicalContext(nil)
	e2, _ := CanonicalContext(map[string]string{})
	if diff := cmp.Diff([]byte{0, 0}, e1); diff != "" || !bytes.Equal(e1, e2) {
		t.Fatalf("empty context: %x %x", e1, e2)
	}
	many := map[string]string{}
	for i := 0; i <= MaxContextPairs; i++ {
		many[fmt.Sprint(i)] = ""
	}
	cases := map[string]map[string]string{
		"empty key":       {"": "v"},
		"long key":        {strings.Repeat("k", MaxContextKeyLen+1): "v"},
		"long value":      {"k": strings.Repeat("v", MaxContextValueLen+1)},
		"invalid utf8":    {"k": "\xff"},
		"too many fields": many,
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := CanonicalContext(c); !errors.Is(err, ErrBadContext) {
				t.Fatalf("err = %v, want ErrBadContext", err)
			}
			if _, err := Seal(fixedKey(t, "x", 1), nil, c, rand.Reader); !errors.Is(err, ErrBadContext) {
				t.Fatalf("Seal err = %v, want ErrBadContext", err)
			}
		})
	}
}

func TestNewKeyValidation(t *testing.T) {
	good := make([]byte, KeySize)
	cases := []struct {
		name    string
		version uint32
		dek     []byte
	}{
		{"", 1, good},
		{strings.Repeat("a", 64), 1, good},
		{"Upper", 1, good},
		{"-lead", 1, good},
		{"trail-", 1, good},
		{"ok", 0, good},
		{"ok", 1, good[:16]},
	}
	for _, c := range cases {
		if _, err := NewKey(c.name, c.version, c.dek); !errors.Is(err, ErrBadKey) {
			t.Errorf("NewKey(%q, %d, %d bytes) err = %v, want ErrBadKey", c.name, c.version, len(c.dek), err)
		}
	}
	if _, err := Seal(fixedKey(t, "x", 1), make([]byte, MaxPlaintext+1), nil, rand.Reader); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize Seal err = %v", err)
	}
}

func TestKeyNeverPrintsMaterial(t *testing.T) {
	dek := bytes.Repeat([]byte{0xC3}, KeySize)
	k, _ := NewKey("redact", 1, dek)
	for _, s := range []string{k.String(), fmt.Sprint(k), fmt.Sprintf("%v %+v", k, k), k.LogValue().String()} {
		if strings.Contains(s, hex.EncodeToString(k.prk[:4])) || strings.Contains(s, "c3c3") || !strings.Contains(s, "REDACTED") {
			t.Fatalf("key printed as %q", s)
		}
	}
}

// FuzzParse checks that Parse and Open never panic, never read past the
// input, and that anything Parse accepts re-encodes to the same header.
func FuzzParse(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "vectors.json"))
	if err != nil {
		f.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		f.Fatal(err)
	}
	for _, v := range vs {
		ct, _ := hex.DecodeString(v.Ciphertext)
		f.Add(ct)
	}
	f.Add([]byte{})
	f.Add([]byte{Format1})
	f.Add([]byte{Format2})
	k := fixedKey(f, "payments", 7)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, off, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedFormat) {
				t.Fatalf("Parse error of unexpected kind: %v", err)
			}
			return
		}
		if off > len(data)-TagSize || off != headerLen(h.Format, len(h.Keyset)) {
			t.Fatalf("offset %d for %d bytes", off, len(data))
		}
		if ValidateName(h.Keyset) != nil || h.Version == 0 {
			t.Fatalf("Parse accepted %+v", h)
		}
		enc, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatalf("AppendBinary(%+v) refused a parsed header: %v", h, err)
		}
		if !bytes.Equal(enc, data[:off]) {
			t.Fatalf("header re-encodes as %x, parsed from %x", enc, data[:off])
		}
		if h.Keyset == k.Name() && h.Version == k.Version() {
			if pt, err := Open(k, data, nil); err == nil && !bytes.Equal(data, mustSealLike(t, k, h, pt)) {
				t.Fatal("opened a forged ciphertext")
			}
		}
	})
}

// mustSealLike reseals pt with the format, seed and nonce of h: a genuine
// ciphertext reproduces itself byte for byte.
func mustSealLike(t *testing.T, k *Key, h Header, pt []byte) []byte {
	out, err := seal(k, h.Format, pt, nil, bytes.NewReader(append(h.Seed[:], h.Nonce[:]...)))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestHeaderRoundTrip: AppendBinary and Parse are exact inverses, and
// AppendBinary refuses what Parse would refuse. The sizes derived from the
// layout elsewhere (headerNonce, MinCiphertextLen) agree with it.
func TestHeaderRoundTrip(t *testing.T) {
	var seed [SeedSize]byte
	var commitment [CommitmentSize]byte
	var nonce [NonceSize]byte
	for i := range seed {
		seed[i], commitment[i] = byte(i), byte(0x80+i)
	}
	for i := range nonce {
		nonce[i] = byte(0x40 + i)
	}
	for _, h := range []Header{
		{Format: Format1, Keyset: "a", Version: 1, Seed: seed, Nonce: nonce},
		{Format: Format2, Keyset: strings.Repeat("z", MaxNameLen), Version: 1<<32 - 1, Seed: seed, Commitment: commitment, Nonce: nonce},
	} {
		enc, err := h.AppendBinary([]byte("prefix"))
		if err != nil {
			t.Fatal(err)
		}
		enc = enc[len("prefix"):]
		if len(enc) != headerLen(h.Format, len(h.Keyset)) {
			t.Fatalf("format %d: %d header bytes, want %d", h.Format, len(enc), headerLen(h.Format, len(h.Keyset)))
		}
		got, off, err := Parse(append(enc, make([]byte, TagSize)...))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(h, got); diff != "" || off != len(enc) {
			t.Fatalf("format %d: Parse(AppendBinary(h)) at offset %d of %d (-want +got):\n%s", h.Format, off, len(enc), diff)
		}
		if !bytes.Equal(headerNonce(enc), h.Nonce[:]) {
			t.Fatalf("format %d: headerNonce = %x, want %x", h.Format, headerNonce(enc), h.Nonce)
		}
	}
	// The smallest header of any format, plus the tag.
	if want := min(headerLen(Format1, 1), headerLen(Format2, 1)) + TagSize; MinCiphertextLen != want {
		t.Errorf("MinCiphertextLen = %d, want %d", MinCiphertextLen, want)
	}
	bad := map[string]struct {
		h    Header
		want error
	}{
		"unknown format":        {Header{Format: 3, Keyset: "a", Version: 1}, ErrUnsupportedFormat},
		"invalid name":          {Header{Format: Format2, Keyset: "A", Version: 1}, ErrBadKey},
		"version zero":          {Header{Format: Format2, Keyset: "a"}, ErrBadKey},
		"format 1 with commitm": {Header{Format: Format1, Keyset: "a", Version: 1, Commitment: commitment}, ErrMalformed},
	}
	for name, c := range bad {
		if _, err := c.h.AppendBinary(nil); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
}

// BenchmarkSeal1KiB prices the envelope against AES-GCM under one fixed key
// (the floor) and Format2 against Format1 (the price of the key
// commitment), all measured in the same run and reported as ratios.
func BenchmarkSeal1KiB(b *testing.B) {
	pt := make([]byte, 1024)
	var baseline, format1 float64 // ns/op measured earlier in this run
	nsPerOp := func(b *testing.B) float64 { return float64(b.Elapsed().Nanoseconds()) / float64(b.N) }
	ratio := func(b *testing.B, base float64, unit string) {
		if base > 0 {
			b.ReportMetric(nsPerOp(b)/base, unit)
		}
	}
	b.Run("baseline=aes-gcm-fixed-key", func(b *testing.B) {
		block, _ := aes.NewCipher(make([]byte, 32))
		aead, _ := cipher.NewGCM(block)
		nonce := make([]byte, NonceSize)
		b.SetBytes(1024)
		for b.Loop() {
			_, _ = rand.Read(nonce)
			aead.Seal(nil, nonce, pt, nonce)
		}
		baseline = nsPerOp(b)
	})
	k := fixedKey(b, "bench", 1)
	ctx := map[string]string{"tenant": "t"}
	b.Run("format=1", func(b *testing.B) {
		b.SetBytes(1024)
		for b.Loop() {
			if _, err := seal(k, Format1, pt, ctx, rand.Reader); err != nil {
				b.Fatal(err)
			}
		}
		format1 = nsPerOp(b)
		ratio(b, baseline, "x-baseline")
	})
	b.Run("format=2", func(b *testing.B) {
		b.SetBytes(1024)
		for b.Loop() {
			if _, err := Seal(k, pt, ctx, rand.Reader); err != nil {
				b.Fatal(err)
			}
		}
		ratio(b, baseline, "x-baseline")
		ratio(b, format1, "x-format1")
	})
	// A batch's messages through one Sealer: one seed per SeedMessages.
	b.Run("format=2/sealer", func(b *testing.B) {
		b.SetBytes(1024)
		s := NewSealer(k, rand.Reader)
		for b.Loop() {
			if _, err := s.Seal(pt, ctx); err != nil {
				b.Fatal(err)
			}
		}
		ratio(b, baseline, "x-baseline")
	})
}

// The pooled single-block HMACs in messageAEAD must equal HKDF-Expand with
// the labels SPEC.md gives.
func TestMessageKeyIsHKDF(t *testing.T) {
	k := fixedKey(t, "orders", 3)
	seed := bytes.Repeat([]byte{0x42}, SeedSize)
	expand := func(label string) []byte {
		out, err := hkdf.Expand(sha256.New, k.prk, label+string(seed), KeySize)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, c := range []struct {
		format      byte
		keyLabel    string
		commitLabel string
	}{
		{Format1, "keyshift envelope v1 message key", ""},
		{Format2, "keyshift envelope v2 message key", "keyshift envelope v2 commitment"},
	} {
		block, _ := aes.NewCipher(expand(c.keyLabel))
		ref, _ := cipher.NewGCM(block)
		var commitment [CommitmentSize]byte
		got, err := k.messageAEAD(c.format, seed, &commitment)
		if err != nil {
			t.Fatal(err)
		}
		nonce := make([]byte, NonceSize)
		if !bytes.Equal(ref.Seal(nil, nonce, []byte("x"), nil), got.Seal(nil, nonce, []byte("x"), nil)) {
			t.Fatalf("format %d: message key differs from HKDF-Expand", c.format)
		}
		want := make([]byte, CommitmentSize)
		if c.commitLabel != "" {
			want = expand(c.commitLabel)
		}
		if diff := cmp.Diff(want, commitment[:]); diff != "" {
			t.Fatalf("format %d: commitment (-want +got):\n%s", c.format, diff)
		}
	}
	if _, err := k.messageAEAD(3, seed, new([CommitmentSize]byte)); !errors.Is(err, ErrUnsupportedFormat) {
		t.Fatalf("format 3: err = %v", err)
	}
}

func TestMAC(t *testing.T) {
	k := fixedKey(t, "orders", 3)
	m := k.MAC([]byte("GET /api"))
	if len(m) != 32 || !k.VerifyMAC([]byte("GET /api"), m) {
		t.Fatal("MAC does not verify")
	}
	if k.VerifyMAC([]byte("GET /apj"), m) || fixedKey(t, "orders", 4).VerifyMAC([]byte("GET /api"), m) {
		t.Fatal("MAC verified other data or under another key")
	}
	want, _ := hkdf.Expand(sha256.New, k.prk, macInfo, KeySize)
	if bytes.Equal(want, k.prk) || !bytes.Equal(want, k.macKey) {
		t.Fatal("MAC key is not the HKDF-derived key")
	}
}

// A wiped key holds zeros and serves nothing: no seal, no open, no MAC.
func TestWipe(t *testing.T) {
	dek := make([]byte, KeySize)
	dek[0] = 1
	k, err := NewKey("payments", 1, dek)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := Seal(k, []byte("x"), nil, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mac := k.MAC([]byte("m"))
	k.Wipe()
	k.Wipe() // idempotent
	if !k.Wiped() {
		t.Fatal("Wiped() = false after Wipe")
	}
	for _, b := range append(append([]byte{}, k.prk...), k.macKey...) {
		if b != 0 {
			t.Fatal("key material left after Wipe")
		}
	}
	if _, err := Seal(k, []byte("x"), nil, rand.Reader); !errors.Is(err, ErrWiped) {
		t.Fatalf("Seal after Wipe = %v, want ErrWiped", err)
	}
	if _, err := Open(k, ct, nil); !errors.Is(err, ErrWiped) {
		t.Fatalf("Open after Wipe = %v, want ErrWiped", err)
	}
	if k.VerifyMAC([]byte("m"), mac) {
		t.Fatal("VerifyMAC passed with a wiped key")
	}
}

// A Sealer's messages share one seed (and so one commitment) for
// SeedMessages messages, then move to a fresh one; every message has its
// own nonce and opens with Open under its own context.
func TestSealerSharesOneSeedPerSeedMessages(t *testing.T) {
	k := fixedKey(t, "batch", 3)
	s := NewSealer(k, rand.Reader)
	if s.Key() != k {
		t.Fatal("Key() is not the sealer's key")
	}
	n := 2*SeedMessages + 1
	seeds := map[[SeedSize]byte]int{}
	nonces := map[[NonceSize]byte]bool{}
	var order [][SeedSize]byte
	for i := range n {
		pt := []byte(fmt.Sprintf("message %d", i))
		c := map[string]string{"i": fmt.Sprint(i)}
		ct, err := s.Seal(pt, c)
		if err != nil {
			t.Fatal(err)
		}
		h, _, err := Parse(ct)
		if err != nil {
			t.Fatal(err)
		}
		if h.Format != SealFormat || h.Keyset != "batch" || h.Version != 3 {
			t.Fatalf("message %d: header %+v", i, h)
		}
		if nonces[h.Nonce] {
			t.Fatalf("message %d: nonce repeated", i)
		}
		nonces[h.Nonce] = true
		if seeds[h.Seed] == 0 {
			order = append(order, h.Seed)
		}
		seeds[h.Seed]++
		got, err := Open(k, ct, c)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("message %d: Open = %q, %v", i, got, err)
		}
		if _, err := Open(k, ct, map[string]string{"i": "other"}); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("message %d opened under another context: %v", i, err)
		}
	}
	if len(order) != 3 || seeds[order[0]] != SeedMessages || seeds[order[1]] != SeedMessages || seeds[order[2]] != 1 {
		t.Fatalf("messages per seed: %d seeds, want %d, %d, 1", len(order), SeedMessages, SeedMessages)
	}
}

// A Sealer fails, and keeps working, on bad input; it stops on a wiped key
// and on a failed random source without returning a ciphertext.
func TestSealerErrors(t *testing.T) {
	k := fixedKey(t, "batch", 1)
	s := NewSealer(k, rand.Reader)
	if _, err := s.Seal(make([]byte, MaxPlaintext+1), nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize plaintext: %v", err)
	}
	if _, err := s.Seal([]byte("x"), map[string]string{"": "v"}); !errors.Is(err, ErrBadContext) {
		t.Fatalf("bad context: %v", err)
	}
	ct, err := s.Seal([]byte("still works"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := Open(k, ct, nil); err != nil || string(pt) != "still works" {
		t.Fatalf("Open = %q, %v", pt, err)
	}

	broken := NewSealer(k, bytes.NewReader(make([]byte, SeedSize+NonceSize)))
	if _, err := broken.Seal([]byte("first"), nil); err != nil {
		t.Fatal(err)
	}
	if ct, err := broken.Seal([]byte("second"), nil); err == nil || ct != nil {
		t.Fatalf("exhausted random source: %x, %v", ct, err)
	}
	if ct, err := NewSealer(k, bytes.NewReader(nil)).Seal([]byte("x"), nil); err == nil || ct != nil {
		t.Fatalf("empty random source: %x, %v", ct, err)
	}

	k.Wipe()
	if _, err := s.Seal([]byte("after wipe"), nil); !errors.Is(err, ErrWiped) {
		t.Fatalf("sealing under a wiped key: %v", err)
	}
}

// An Opener opens a mix of ciphertexts (a Sealer's batch, others under
// their own seeds, another key) exactly as Open does, and derives a
// message key once for a run under one seed: the second and later
// ciphertexts of a run cost fewer allocations than the first.
func TestOpenerDerivesOncePerSeed(t *testing.T) {
	k1, k2 := fixedKey(t, "batch", 1), fixedKey(t, "batch", 2)
	s := NewSealer(k1, rand.Reader)
	type item struct {
		k  *Key
		pt string
		ct []byte
	}
	var items []item
	add := func(k *Key, pt string, ct []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, item{k, pt, ct})
	}
	for i := range 3 {
		pt := fmt.Sprint("batch ", i)
		ct, err := s.Seal([]byte(pt), nil)
		add(k1, pt, ct, err)
	}
	ct, err := Seal(k1, []byte("own seed"), nil, rand.Reader)
	add(k1, "own seed", ct, err)
	ct, err = Seal(k2, []byte("other key"), nil, rand.Reader)
	add(k2, "other key", ct, err)
	ct, err = s.Seal([]byte("batch again"), nil)
	add(k1, "batch again", ct, err)

	var o Opener
	for i, it := range items {
		pt, err := o.Open(it.k, it.ct, nil)
		if err != nil || string(pt) != it.pt {
			t.Fatalf("item %d: Open = %q, %v", i, pt, err)
		}
	}

	// Same seed, same key: a forged commitment and a wrong context are
	// still refused, and the next honest ciphertext still opens.
	forged := bytes.Clone(items[1].ct)
	forged[2+len("batch")+4+SeedSize] ^= 1
	if _, err := o.Open(k1, items[0].ct, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Open(k1, forged, nil); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("forged commitment under a cached seed: %v", err)
	}
	if _, err := o.Open(k1, items[1].ct, map[string]string{"a": "b"}); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("wrong context under a cached seed: %v", err)
	}
	if _, err := o.Open(k2, items[1].ct, nil); !errors.Is(err, ErrBadKey) {
		t.Fatalf("ciphertext under another key: %v", err)
	}
	if pt, err := o.Open(k1, items[2].ct, nil); err != nil || string(pt) != "batch 2" {
		t.Fatalf("after the refusals: %q, %v", pt, err)
	}

	first := testing.AllocsPerRun(20, func() {
		var fresh Opener
		if _, err := fresh.Open(k1, items[0].ct, nil); err != nil {
			t.Fatal(err)
		}
	})
	warm := testing.AllocsPerRun(20, func() {
		if _, err := o.Open(k1, items[1].ct, nil); err != nil {
			t.Fatal(err)
		}
	})
	if warm >= first {
		t.Fatalf("opening under a cached seed allocates %v times, a fresh one %v: the message key was derived again", warm, first)
	}

	k1.Wipe()
	if _, err := o.Open(k1, items[0].ct, nil); !errors.Is(err, ErrWiped) {
		t.Fatalf("cached seed of a wiped key: %v", err)
	}
}
