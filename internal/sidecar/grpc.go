package sidecar

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keyshift/keyshift/internal/sidecar/cryptoapi"
	"github.com/keyshift/keyshift/internal/socket"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// grpcAPI adapts Service to the generated CryptoServer: it converts types
// and errors and does nothing else.
type grpcAPI struct {
	v1.UnimplementedCryptoServer
	svc     *Service
	lastErr func(string) string
}

func grpcErr(err error) error { return toStatus(err).Err() }

func (a *grpcAPI) Encrypt(ctx context.Context, r *v1.EncryptRequest) (*v1.EncryptResponse, error) {
	res, err := a.svc.Encrypt(ctx, r.GetKeyset(), r.GetPlaintext(), r.GetContext())
	if err != nil {
		return nil, grpcErr(err)
	}
	return &v1.EncryptResponse{Ciphertext: res.Ciphertext, Keyset: res.Keyset, Version: res.Version}, nil
}

func (a *grpcAPI) Decrypt(ctx context.Context, r *v1.DecryptRequest) (*v1.DecryptResponse, error) {
	res, err := a.svc.Decrypt(ctx, r.GetCiphertext(), r.GetContext())
	if err != nil {
		return nil, grpcErr(err)
	}
	return &v1.DecryptResponse{Plaintext: res.Plaintext, Keyset: res.Keyset, Version: res.Version}, nil
}

func (a *grpcAPI) Rewrap(ctx context.Context, r *v1.RewrapRequest) (*v1.RewrapResponse, error) {
	res, err := a.svc.Rewrap(ctx, r.GetCiphertext(), r.GetContext())
	if err != nil {
		return nil, grpcErr(err)
	}
	return rewrapResponse(res), nil
}

func rewrapResponse(res cryptoapi.Sealed) *v1.RewrapResponse {
	return &v1.RewrapResponse{Ciphertext: res.Ciphertext, Keyset: res.Keyset, FromVersion: res.FromVersion, Version: res.Version, Rewrapped: res.Rewrapped}
}

func itemError(err error) *v1.ItemError {
	st := toStatus(err)
	return &v1.ItemError{Code: uint32(st.Code()), Message: st.Message()}
}

func (a *grpcAPI) EncryptBatch(ctx context.Context, r *v1.EncryptBatchRequest) (*v1.EncryptBatchResponse, error) {
	items := make([]EncryptItem, len(r.GetItems()))
	for i, it := range r.GetItems() {
		items[i] = EncryptItem{Keyset: it.GetKeyset(), Plaintext: it.GetPlaintext(), Context: it.GetContext()}
	}
	out, errs, err := a.svc.EncryptBatch(ctx, items)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &v1.EncryptBatchResponse{Results: make([]*v1.EncryptResult, len(out))}
	for i := range out {
		if errs[i] != nil {
			resp.Results[i] = &v1.EncryptResult{Result: &v1.EncryptResult_Error{Error: itemError(errs[i])}}
			continue
		}
		resp.Results[i] = &v1.EncryptResult{Result: &v1.EncryptResult_Ok{Ok: &v1.EncryptResponse{Ciphertext: out[i].Ciphertext, Keyset: out[i].Keyset, Version: out[i].Version}}}
	}
	return resp, nil
}

func cipherItems[T interface {
	GetCiphertext() []byte
	GetContext() map[string]string
}](in []T) []CipherItem {
	items := make([]CipherItem, len(in))
	for i, it := range in {
		items[i] = CipherItem{Ciphertext: it.GetCiphertext(), Context: it.GetContext()}
	}
	return items
}

func (a *grpcAPI) DecryptBatch(ctx context.Context, r *v1.DecryptBatchRequest) (*v1.DecryptBatchResponse, error) {
	out, errs, err := a.svc.DecryptBatch(ctx, cipherItems(r.GetItems()))
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &v1.DecryptBatchResponse{Results: make([]*v1.DecryptResult, len(out))}
	for i := range out {
		if errs[i] != nil {
			resp.Results[i] = &v1.DecryptResult{Result: &v1.DecryptResult_Error{Error: itemError(errs[i])}}
			continue
		}
		resp.Results[i] = &v1.DecryptResult{Result: &v1.DecryptResult_Ok{Ok: &v1.DecryptResponse{Plaintext: out[i].Plaintext, Keyset: out[i].Keyset, Version: out[i].Version}}}
	}
	return resp, nil
}

func (a *grpcAPI) RewrapBatch(ctx context.Context, r *v1.RewrapBatchRequest) (*v1.RewrapBatchResponse, error) {
	out, errs, err := a.svc.RewrapBatch(ctx, cipherItems(r.GetItems()))
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &v1.RewrapBatchResponse{Results: make([]*v1.RewrapResult, len(out))}
	for i := range out {
		if errs[i] != nil {
			resp.Results[i] = &v1.RewrapResult{Result: &v1.RewrapResult_Error{Error: itemError(errs[i])}}
			continue
		}
		resp.Results[i] = &v1.RewrapResult{Result: &v1.RewrapResult_Ok{Ok: rewrapResponse(out[i])}}
	}
	return resp, nil
}

func (a *grpcAPI) Status(ctx context.Context, _ *v1.StatusRequest) (*v1.StatusResponse, error) {
	return statusResponse(a.svc, a.lastErr), nil
}

func statusResponse(svc *Service, lastErr func(string) string) *v1.StatusResponse {
	ready, sets := svc.Status(lastErr)
	resp := &v1.StatusResponse{Ready: ready}
	for _, s := range sets {
		ks := &v1.KeysetStatus{Name: s.Name, Kms: s.KMS, Primary: s.Primary, Source: s.Source, LastError: s.LastError}
		if !s.LoadedAt.IsZero() {
			ks.LoadedAt = timestamppb.New(s.LoadedAt)
		}
		for _, v := range s.Versions {
			ks.Versions = append(ks.Versions, &v1.VersionStatus{Version: v.Version, State: v.State, KekVersion: v.KEKVersion})
		}
		resp.Keysets = append(resp.Keysets, ks)
	}
	return resp
}

// authorize refuses calls from peers whose UID is not on the allowlist,
// with a PERMISSION_DENIED that says which UID and how to allow it.
func authorize(allow socket.Allowlist, m *Metrics) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	check := func(ctx context.Context) error {
		if allow == nil {
			return nil
		}
		p, ok := peer.FromContext(ctx)
		if !ok {
			return status.Error(codes.PermissionDenied, "no peer information")
		}
		info, ok := p.AuthInfo.(socket.AuthInfo)
		if !ok || !allow.Allows(info.Peer.UID) {
			m.PeerRejected("grpc")
			return status.Error(codes.PermissionDenied, deniedMessage(info.Peer.UID))
		}
		return nil
	}
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := check(ctx); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := check(ss.Context()); err != nil {
			return err
		}
		return h(srv, ss)
	}
	return unary, stream
}

func deniedMessage(uid uint32) string {
	return fmt.Sprintf("sidecar: peer uid %d is not allowed (add it to --allowed-uids or the keyshift.io/allowed-uids annotation)", uid)
}
