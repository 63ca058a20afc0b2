package gcp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/kms"
)

func TestClassify(t *testing.T) {
	const key = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
	type result struct {
		Kind     string
		Checksum bool
		Text     string
	}
	for _, tc := range []struct {
		name string
		op   string
		err  error
		want result
	}{
		{"permission denied", opEncrypt, status.Error(codes.PermissionDenied, "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource 'K' (or it may not exist)."),
			result{"user_induced", false, "gcp-kms: Encrypt " + key + ": permission denied (or the key does not exist): the service account (Workload Identity or ADC) needs roles/cloudkms.cryptoKeyEncrypterDecrypter on the key: Cloud KMS says Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource 'K' (or it may not exist). (gRPC PermissionDenied): " + kms.ErrUserInduced.Error()}},
		{"not found", opGetCryptoKey, status.Error(codes.NotFound, "CryptoKey K not found."),
			result{"user_induced", false, "gcp-kms: GetCryptoKey " + key + ": no such key: check the project, location, key ring and key in the URI: Cloud KMS says CryptoKey K not found. (gRPC NotFound): " + kms.ErrUserInduced.Error()}},
		{"disabled version", opDecrypt, status.Error(codes.FailedPrecondition, "K/cryptoKeyVersions/1 is not enabled, current state is: DISABLED."),
			result{"user_induced", false, "gcp-kms: Decrypt " + key + ": the key version is not usable in its current state (disabled, destroyed or scheduled for destruction): enable or restore it (gcloud kms keys versions enable|restore), or rewrap the keyset under the primary version: Cloud KMS says K/cryptoKeyVersions/1 is not enabled, current state is: DISABLED. (gRPC FailedPrecondition): " + kms.ErrUserInduced.Error()}},
		{"unauthenticated", opEncrypt, status.Error(codes.Unauthenticated, "Request had invalid authentication credentials."),
			result{Kind: "user_induced"}},
		{"throttled", opEncrypt, status.Error(codes.ResourceExhausted, "Quota exceeded."),
			result{Kind: "throttled"}},
		{"unavailable", opDecrypt, status.Error(codes.Unavailable, "connection refused"),
			result{"unavailable", false, "gcp-kms: Decrypt " + key + ": cannot reach Cloud KMS: connection refused (gRPC Unavailable): " + kms.ErrUnavailable.Error()}},
		{"deadline exceeded", opDecrypt, status.Error(codes.DeadlineExceeded, "Deadline exceeded."), result{Kind: "unavailable"}},
		{"internal", opGetCryptoKey, status.Error(codes.Internal, "Internal error encountered."), result{Kind: "unavailable"}},
		{"unknown", opEncrypt, status.Error(codes.Unknown, "?"), result{Kind: "unavailable"}},
		{"invalid ciphertext", opDecrypt, status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid."),
			result{"corrupt", false, "gcp-kms: Decrypt " + key + ": the wrapped key or its aad does not verify (or another CryptoKey wrapped it) (gRPC InvalidArgument): " + kms.ErrCorrupt.Error()}},
		{"invalid encrypt request", opEncrypt, status.Error(codes.InvalidArgument, "plaintext too long: QUOTED-INPUT"),
			result{"user_induced", false, "gcp-kms: Encrypt " + key + ": Cloud KMS refused the request as invalid (gRPC InvalidArgument): " + kms.ErrUserInduced.Error()}},
		{"request damaged in transit, decrypt", opDecrypt, status.Error(codes.InvalidArgument, "The checksum in field ciphertext_crc32c did not match the data in field ciphertext."),
			result{Kind: "unavailable", Checksum: true}},
		{"request damaged in transit, encrypt", opEncrypt, status.Error(codes.InvalidArgument, "The checksum in field plaintext_crc32c did not match the data in field plaintext."),
			result{Kind: "unavailable", Checksum: true}},
		{"wrapped status", opEncrypt, fmt.Errorf("rpc: %w", status.Error(codes.ResourceExhausted, "Quota exceeded.")), result{Kind: "throttled"}},
		{"context deadline", opEncrypt, context.DeadlineExceeded, result{Kind: "unavailable"}},
		{"not a status", opEncrypt, errors.New("credentials: could not find default credentials"), result{Kind: "unavailable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := classify(tc.op, key, tc.err)
			got := result{Kind: kms.Reason(e), Checksum: errors.Is(e, ErrChecksum)}
			want := tc.want
			if want.Text != "" {
				got.Text = e.Error()
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("classify (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClassifyKeepsQuotedInputOut(t *testing.T) {
	e := classify(opEncrypt, "k", status.Error(codes.InvalidArgument, "bad value SECRETBYTES"))
	if s := fmt.Sprintf("%v %+v", e, e); strings.Contains(s, "SECRETBYTES") {
		t.Errorf("error repeats the InvalidArgument message: %s", s)
	}
}
