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

// generateVectors builds the vector set from fixed inputs; -update writes it.
func generateVectors(t *testing.T) []vector {
	dek := make([]byte, KeySize)
	for i := range dek {
		dek[i] = byte(i)
	}
	seed := bytes.Repeat([]byte{0xA5}, SeedSize)
	nonce := bytes.Repeat([]byte{0x5A}, NonceSize)
	rnd := func() *bytes.Reader { return bytes.NewReader(append(append([]byte{}, seed...), nonce...)) }
	k, err := NewKey("payments", 7, dek)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(pt []byte, c map[string]string) string {
		ct, err := Seal(k, pt, c, rnd())
		if err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(ct)
	}
	base := vector{DEK: hex.EncodeToString(dek), Keyset: "payments", Version: 7, Seed: hex.EncodeToString(seed), Nonce: hex.EncodeToString(nonce)}
	var vs []vector
	add := func(comment string, pt []byte, c map[string]string) string {
		v := base
		v.Comment, v.Plaintext, v.Context, v.Ciphertext = comment, hex.EncodeToString(pt), c, seal(pt, c)
		vs = append(vs, v)
		return v.Ciphertext
	}
	add("empty plaintext, no context", nil, nil)
	ctx := map[string]string{"tenant": "acme", "table": "users", "ünï": "cödé"}
	good := add("short plaintext with context", []byte("hello, keyshift"), ctx)
	add("1 KiB plaintext", bytes.Repeat([]byte("0123456789abcdef"), 64), map[string]string{"a": ""})
	neg := func(comment, ct string, open map[string]string, want error) {
		v := base
		v.Comment, v.Ciphertext, v.OpenWith, v.Error = comment, ct, open, want.Error()
		v.Seed, v.Nonce = "", ""
		vs = append(vs, v)
	}
	flip := func(s string, i int) string {
		b, _ := hex.DecodeString(s)
		b[i] ^= 0x01
		return hex.EncodeToString(b)
	}
	neg("wrong context value", good, map[string]string{"tenant": "evil", "table": "users", "ünï": "cödé"}, ErrDecrypt)
	neg("context missing", good, nil, ErrDecrypt)
	neg("flipped seed byte", flip(good, 2+8+4), ctx, ErrDecrypt)
	neg("flipped nonce byte", flip(good, 2+8+4+SeedSize), ctx, ErrDecrypt)
	neg("flipped tag byte", flip(good, len(good)/2-1), ctx, ErrDecrypt)
	neg("unsupported format", "02"+good[2:], ctx, ErrUnsupportedFormat)
	neg("truncated", good[:40], ctx, ErrMalformed)
	neg("name length zero", good[:2]+"00"+good[4:], ctx, ErrMalformed)
	neg("name length past end", good[:2]+"ff"+good[4:], ctx, ErrMalformed)
	neg("uppercase name", good[:4]+hex.EncodeToString([]byte("PAYMENTS"))+good[4+16:], ctx, ErrMalformed)
	neg("version zero", good[:4+16]+"00000000"+good[4+16+8:], ctx, ErrMalformed)
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
			got, err := Seal(k, mustHex(t, v.Plaintext), v.Context, rnd)
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
	if h.Keyset != "orders" || h.Version != 3 || h.Format != Format1 || off != len(ct)-len(pt)-TagSize {
		t.Fatalf("header = %+v off %d", h, off)
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
	if _, err := Open(other, ct, nil); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("same name/version, other DEK: err = %v, want ErrDecrypt", err)
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
	k := fixedKey(f, "payments", 7)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, off, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedFormat) {
				t.Fatalf("Parse error of unexpected kind: %v", err)
			}
			return
		}
		if off > len(data)-TagSize || off != Overhead(len(h.Keyset))-TagSize {
			t.Fatalf("offset %d for %d bytes", off, len(data))
		}
		if ValidateName(h.Keyset) != nil || h.Version == 0 {
			t.Fatalf("Parse accepted %+v", h)
		}
		if h.Keyset == k.Name() && h.Version == k.Version() {
			if pt, err := Open(k, data, nil); err == nil && !bytes.Equal(data, mustSealLike(t, k, pt, data)) {
				t.Fatal("opened a forged ciphertext")
			}
		}
	})
}

// mustSealLike reseals pt with the seed and nonce of ct: a genuine
// ciphertext reproduces itself byte for byte.
func mustSealLike(t *testing.T, k *Key, pt, ct []byte) []byte {
	_, off, _ := Parse(ct)
	out, err := Seal(k, pt, nil, bytes.NewReader(ct[off-SeedSize-NonceSize:off]))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func BenchmarkSeal1KiB(b *testing.B) {
	pt := make([]byte, 1024)
	b.Run("baseline=aes-gcm-fixed-key", func(b *testing.B) {
		block, _ := aes.NewCipher(make([]byte, 32))
		aead, _ := cipher.NewGCM(block)
		nonce := make([]byte, NonceSize)
		b.SetBytes(1024)
		for b.Loop() {
			_, _ = rand.Read(nonce)
			aead.Seal(nil, nonce, pt, nonce)
		}
	})
	b.Run("envelope", func(b *testing.B) {
		k := fixedKey(b, "bench", 1)
		ctx := map[string]string{"tenant": "t"}
		b.SetBytes(1024)
		for b.Loop() {
			if _, err := Seal(k, pt, ctx, rand.Reader); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The pooled single-block HMAC in messageAEAD must equal HKDF-Expand.
func TestMessageKeyIsHKDF(t *testing.T) {
	k := fixedKey(t, "orders", 3)
	seed := bytes.Repeat([]byte{0x42}, SeedSize)
	want, err := hkdf.Expand(sha256.New, k.prk, msgInfo+string(seed), KeySize)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(want)
	ref, _ := cipher.NewGCM(block)
	got, err := k.messageAEAD(seed)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, NonceSize)
	if !bytes.Equal(ref.Seal(nil, nonce, []byte("x"), nil), got.Seal(nil, nonce, []byte("x"), nil)) {
		t.Fatal("message key differs from HKDF-Expand")
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
