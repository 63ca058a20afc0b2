package envelope

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// Security review finding 9: AES-GCM is not key-committing. Whoever holds two
// data keys can solve for one ciphertext block so that the GCM tag verifies
// under both (the "invisible salamanders" construction: GHASH is linear in
// each ciphertext block, so the two tags agree for exactly one value of a
// free block). These tests build that ciphertext for two data keys that
// share a keyset name and version, keeping a real header of the format under
// test, so only the data key differs.

// TestNoCiphertextOpensUnderTwoKeys is the regression test. The ciphertext's
// tag verifies under both message keys (checked with crypto/cipher
// directly), so only the key commitment can stop it: Open must refuse it
// under the key whose commitment is not in the header. Before Format2 it
// opened under both keys, to two different plaintexts.
func TestNoCiphertextOpensUnderTwoKeys(t *testing.T) {
	a, b := twoKeys(t)
	ctx := map[string]string{"tenant": "acme"}
	ct, err := Seal(a, bytes.Repeat([]byte("x"), 32), ctx, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ct = multiKeyCiphertext(t, a, b, ct, ctx)
	ptA, errA := Open(a, ct, ctx)
	ptB, errB := Open(b, ct, ctx)
	if errA == nil && errB == nil {
		t.Fatalf("one ciphertext opened under two data keys, to %x and %x", ptA, ptB)
	}
	if errA != nil {
		t.Fatalf("Open under the key the header commits to: %v", errA)
	}
	if !errors.Is(errB, ErrDecrypt) || !strings.Contains(errB.Error(), "key commitment") || ptB != nil {
		t.Fatalf("Open under the other key = %x, %v; want nil, ErrDecrypt for the key commitment", ptB, errB)
	}
}

// TestFormat1IsNotKeyCommitting shows the same construction against Format1,
// which Open still reads: the ciphertext opens under both data keys, to two
// different plaintexts. It is why Format1 ciphertexts should be re-sealed,
// and Format1 refused once none is left.
func TestFormat1IsNotKeyCommitting(t *testing.T) {
	a, b := twoKeys(t)
	ct, err := seal(a, Format1, bytes.Repeat([]byte("x"), 32), nil, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ct = multiKeyCiphertext(t, a, b, ct, nil)
	ptA, errA := Open(a, ct, nil)
	ptB, errB := Open(b, ct, nil)
	if errA != nil || errB != nil || bytes.Equal(ptA, ptB) {
		t.Fatalf("Format1: Open under a = %x, %v; under b = %x, %v; want two different plaintexts", ptA, errA, ptB, errB)
	}
}

// twoKeys returns two keys with the same keyset name and version and
// different data keys, as a keyset recreated under the same name would
// hold.
func twoKeys(t *testing.T) (*Key, *Key) {
	a, err := NewKey("orders", 3, bytes.Repeat([]byte{0x11}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewKey("orders", 3, bytes.Repeat([]byte{0x22}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// multiKeyCiphertext keeps the header of sealed (two or more blocks of
// ciphertext) and replaces its first ciphertext block and tag so that the
// AES-GCM tag verifies under the message keys of both a and b. It checks
// that with crypto/cipher before returning.
func multiKeyCiphertext(t *testing.T, a, b *Key, sealed []byte, context map[string]string) []byte {
	t.Helper()
	h, off, err := Parse(sealed)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := CanonicalContext(context)
	if err != nil {
		t.Fatal(err)
	}
	ad := append(bytes.Clone(sealed[:off]), ctx...)
	body := bytes.Clone(sealed[off : len(sealed)-TagSize])
	if len(body) < 32 {
		t.Fatalf("need two ciphertext blocks, have %d bytes", len(body))
	}
	var hs, ss, g0, g1 [2]gf128
	for i, k := range []*Key{a, b} {
		block, err := aes.NewCipher(messageKey(t, k, h))
		if err != nil {
			t.Fatal(err)
		}
		var x [16]byte
		block.Encrypt(x[:], x[:])
		hs[i] = gfFromBlock(x[:])
		j0 := append(h.Nonce[:], 0, 0, 0, 1)
		block.Encrypt(x[:], j0)
		ss[i] = gfFromBlock(x[:])
		clear(body[:16])
		g0[i] = ghash(hs[i], ad, body)
		body[0] = 0x80 // the field's 1
		g1[i] = ghash(hs[i], ad, body)
	}
	// tag_i(c) = S_i + g0_i + c*(g1_i - g0_i); solve tag_a(c) = tag_b(c) for c.
	num := ss[0].add(ss[1]).add(g0[0]).add(g0[1])
	den := g1[0].add(g0[0]).add(g1[1]).add(g0[1])
	c := num.mul(den.inv())
	c.put(body[:16])
	tag := ss[0].add(ghash(hs[0], ad, body))
	var tagBytes [16]byte
	tag.put(tagBytes[:])
	out := append(append(bytes.Clone(sealed[:off]), body...), tagBytes[:]...)

	for _, k := range []*Key{a, b} {
		block, _ := aes.NewCipher(messageKey(t, k, h))
		gcm, _ := cipher.NewGCM(block)
		if _, err := gcm.Open(nil, h.Nonce[:], out[off:], ad); err != nil {
			t.Fatalf("construction broken: the AES-GCM tag does not verify under %v", k)
		}
	}
	return out
}

// messageKey is the message key SPEC.md derives for h's format and seed,
// computed with crypto/hkdf.
func messageKey(t *testing.T, k *Key, h Header) []byte {
	t.Helper()
	info := msgInfo
	if h.Format == Format2 {
		info = msgInfo2
	}
	mk, err := hkdf.Expand(sha256.New, k.prk, info+string(h.Seed[:]), KeySize)
	if err != nil {
		t.Fatal(err)
	}
	return mk
}

// gf128 is an element of GCM's field GF(2^128) as a 16-byte block read
// big-endian: the first bit of the block is the coefficient of x^0
// (NIST SP 800-38D, section 6.3).
type gf128 struct{ hi, lo uint64 }

func gfFromBlock(b []byte) gf128 {
	return gf128{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}

func (x gf128) put(b []byte) {
	binary.BigEndian.PutUint64(b, x.hi)
	binary.BigEndian.PutUint64(b[8:], x.lo)
}

func (x gf128) add(y gf128) gf128 { return gf128{x.hi ^ y.hi, x.lo ^ y.lo} }

// mul is SP 800-38D Algorithm 1.
func (x gf128) mul(y gf128) gf128 {
	var z gf128
	v := y
	for i := 0; i < 128; i++ {
		word, shift := x.hi, 63-i
		if i >= 64 {
			word, shift = x.lo, 127-i
		}
		bit := word >> shift & 1
		if bit == 1 {
			z = z.add(v)
		}
		lsb := v.lo & 1
		v.lo = v.lo>>1 | v.hi<<63
		v.hi >>= 1
		if lsb == 1 {
			v.hi ^= 0xe1 << 56
		}
	}
	return z
}

// inv is x^(2^128-2), the inverse of a non-zero x.
func (x gf128) inv() gf128 {
	r := gf128{hi: 1 << 63} // 1
	for range 127 {
		r = r.mul(r).mul(x)
	}
	return r.mul(r)
}

// ghash is GHASH_H(A, C) of AES-GCM.
func ghash(h gf128, ad, ct []byte) gf128 {
	var y gf128
	absorb := func(data []byte) {
		for len(data) > 0 {
			var blk [16]byte
			data = data[copy(blk[:], data):]
			y = y.add(gfFromBlock(blk[:])).mul(h)
		}
	}
	absorb(ad)
	absorb(ct)
	var lens [16]byte
	binary.BigEndian.PutUint64(lens[:], uint64(len(ad))*8)
	binary.BigEndian.PutUint64(lens[8:], uint64(len(ct))*8)
	absorb(lens[:])
	return y
}
