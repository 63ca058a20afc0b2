package loadtest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"

	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// EchoMethod is the full gRPC method name of the baseline echo service.
const EchoMethod = "/keyshift.bench.Echo/Echo"

type echoServer interface {
	Echo(context.Context, *v1.EncryptRequest) (*v1.EncryptResponse, error)
}

// echo answers an EncryptRequest with its plaintext, or with one AES-256-GCM
// seal of it under a fixed key: the least work a crypto sidecar can do.
type echo struct{ aead cipher.AEAD }

func (e echo) Echo(_ context.Context, r *v1.EncryptRequest) (*v1.EncryptResponse, error) {
	if e.aead == nil {
		return &v1.EncryptResponse{Ciphertext: r.GetPlaintext(), Keyset: r.GetKeyset()}, nil
	}
	out := make([]byte, 12, 12+len(r.GetPlaintext())+16)
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	return &v1.EncryptResponse{Ciphertext: e.aead.Seal(out, out, r.GetPlaintext(), nil), Keyset: r.GetKeyset()}, nil
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "keyshift.bench.Echo",
	HandlerType: (*echoServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(v1.EncryptRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			return srv.(echoServer).Echo(ctx, in)
		},
	}},
}

// StartEcho serves the baseline on a Unix socket at path: a plain
// grpc.NewServer with the sidecar's message types and, with aesGCM, one
// AES-GCM seal per call. It is the physical limit of the sidecar's design,
// so every figure can be a ratio against it.
func StartEcho(path string, aesGCM bool) (stop func(), err error) {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("loadtest: echo listener: %w", err)
	}
	e := echo{}
	if aesGCM {
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		block, _ := aes.NewCipher(key)
		if e.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
	}
	s := grpc.NewServer()
	s.RegisterService(&echoDesc, e)
	go func() { _ = s.Serve(l) }()
	return func() { s.Stop(); _ = os.Remove(path) }, nil
}
