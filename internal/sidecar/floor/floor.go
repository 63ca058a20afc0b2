// Package floor is keyshift's Crypto API without the crypto: the
// like-for-like floor the load tool and the benchmarks measure the
// sidecar against. Served through sidecar.ServeAPI, it differs from the
// sidecar only by what the handlers do.
package floor

import (
	"context"

	"github.com/keyshift/keyshift/internal/envelope"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// Keyset names the keyset the floor pretends to serve.
const Keyset = "floor"

// floor is the sidecar's Crypto API without the crypto: every RPC the
// sidecar serves, batch forms included, answering with messages of the
// sizes the sidecar's would have (a ciphertext is the plaintext plus the
// envelope's overhead) and copying the bytes, so the transport, the
// protobuf work and the allocations are the sidecar's and only the key
// lookups, AES-GCM, metrics and usage records are missing.
type floor struct {
	v1.UnimplementedCryptoServer
	overhead int
}

// New returns the floor's CryptoServer.
func New() v1.CryptoServer { return &floor{overhead: envelope.Overhead(len(Keyset))} }

func (f *floor) seal(pt []byte) []byte {
	ct := make([]byte, f.overhead+len(pt))
	copy(ct[f.overhead:], pt)
	return ct
}

func (f *floor) open(ct []byte) []byte {
	if len(ct) < f.overhead {
		return nil
	}
	return append([]byte(nil), ct[f.overhead:]...)
}

func (f *floor) Encrypt(_ context.Context, r *v1.EncryptRequest) (*v1.EncryptResponse, error) {
	return &v1.EncryptResponse{Ciphertext: f.seal(r.GetPlaintext()), Keyset: Keyset, Version: 1}, nil
}

func (f *floor) Decrypt(_ context.Context, r *v1.DecryptRequest) (*v1.DecryptResponse, error) {
	return &v1.DecryptResponse{Plaintext: f.open(r.GetCiphertext()), Keyset: Keyset, Version: 1}, nil
}

// Rewrap answers as the sidecar does for a ciphertext already under the
// primary, which is what the load tool sends: the plaintext is opened
// (here copied) and dropped, and the ciphertext goes back as it came.
func (f *floor) Rewrap(_ context.Context, r *v1.RewrapRequest) (*v1.RewrapResponse, error) {
	clear(f.open(r.GetCiphertext()))
	return &v1.RewrapResponse{Ciphertext: r.GetCiphertext(), Keyset: Keyset, FromVersion: 1, Version: 1}, nil
}

func (f *floor) EncryptBatch(ctx context.Context, r *v1.EncryptBatchRequest) (*v1.EncryptBatchResponse, error) {
	out := &v1.EncryptBatchResponse{Results: make([]*v1.EncryptResult, len(r.GetItems()))}
	for i, it := range r.GetItems() {
		resp, _ := f.Encrypt(ctx, it)
		out.Results[i] = &v1.EncryptResult{Result: &v1.EncryptResult_Ok{Ok: resp}}
	}
	return out, nil
}

func (f *floor) DecryptBatch(ctx context.Context, r *v1.DecryptBatchRequest) (*v1.DecryptBatchResponse, error) {
	out := &v1.DecryptBatchResponse{Results: make([]*v1.DecryptResult, len(r.GetItems()))}
	for i, it := range r.GetItems() {
		resp, _ := f.Decrypt(ctx, it)
		out.Results[i] = &v1.DecryptResult{Result: &v1.DecryptResult_Ok{Ok: resp}}
	}
	return out, nil
}

func (f *floor) RewrapBatch(ctx context.Context, r *v1.RewrapBatchRequest) (*v1.RewrapBatchResponse, error) {
	out := &v1.RewrapBatchResponse{Results: make([]*v1.RewrapResult, len(r.GetItems()))}
	for i, it := range r.GetItems() {
		resp, _ := f.Rewrap(ctx, it)
		out.Results[i] = &v1.RewrapResult{Result: &v1.RewrapResult_Ok{Ok: resp}}
	}
	return out, nil
}

func (f *floor) Status(context.Context, *v1.StatusRequest) (*v1.StatusResponse, error) {
	return &v1.StatusResponse{Ready: true}, nil
}
