package sidecar

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
)

// sealFormat1 seals as keyshift did before key commitment, written here
// from SPEC.md (format 1) rather than with the envelope package, which
// no longer writes it.
func sealFormat1(t *testing.T, dek []byte, name string, version uint32, pt []byte) []byte {
	t.Helper()
	prk, err := hkdf.Extract(sha256.New, dek, []byte("keyshift envelope v1 prk"))
	if err != nil {
		t.Fatal(err)
	}
	h := envelope.Header{Format: envelope.Format1, Keyset: name, Version: version}
	rand.Read(h.Seed[:])
	rand.Read(h.Nonce[:])
	mk, err := hkdf.Expand(sha256.New, prk, "keyshift envelope v1 message key"+string(h.Seed[:]), 32)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(mk)
	aead, _ := cipher.NewGCM(block)
	hdr, err := h.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, _ := envelope.CanonicalContext(nil)
	return aead.Seal(hdr, h.Nonce[:], pt, append(append([]byte{}, hdr...), ctx...))
}

// Rewrap moves data out of the format that is not key-committing, even
// when it is already under the primary version.
func TestRewrapUpgradesFormat1(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	v := e.keyset("payments").Primary()
	dek, err := e.kms.Unwrap(context.Background(), kms.WrappedKey{Ciphertext: v.WrappedKey, KEKVersion: v.KEKVersion}, keyset.WrapAAD("payments", v.Version))
	if err != nil {
		t.Fatal(err)
	}
	old := sealFormat1(t, dek, "payments", v.Version, []byte("written before commitment"))
	if pt, err := e.client.Decrypt(ctx, old, nil); err != nil || string(pt) != "written before commitment" {
		t.Fatalf("format 1 no longer decrypts: %q, %v", pt, err)
	}
	out, rewrapped, err := e.client.Rewrap(ctx, old, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out[0] != envelope.SealFormat || !rewrapped {
		t.Fatalf("rewrap of a format 1 ciphertext under the primary: format 0x%02x, rewrapped %v; want format 0x%02x", out[0], rewrapped, envelope.SealFormat)
	}
	if pt, err := e.client.Decrypt(ctx, out, nil); err != nil || string(pt) != "written before commitment" {
		t.Fatalf("rewrapped: %q, %v", pt, err)
	}
}
