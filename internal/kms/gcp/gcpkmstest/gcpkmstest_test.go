package gcpkmstest_test

import (
	"hash/crc32"
	"testing"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keyshift/keyshift/internal/kms/gcp/gcpkmstest"
)

const key = "projects/p/locations/global/keyRings/r/cryptoKeys/k"

func crc(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))))
}

// dial returns the generated client for srv, with no retries or checks of
// its own, to see exactly what the server answers.
func dial(t *testing.T, srv *gcpkmstest.Server) kmspb.KeyManagementServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return kmspb.NewKeyManagementServiceClient(conn)
}

func TestChecksumsAndFlags(t *testing.T) {
	srv := gcpkmstest.Start(t)
	if err := srv.CreateKey(key); err != nil {
		t.Fatal(err)
	}
	c := dial(t, srv)
	pt, aad := []byte("data key"), []byte("aad")
	bad := wrapperspb.Int64(1)

	type answer struct {
		Code                         codes.Code
		Message                      string
		VerifiedPlaintext, VerifiedA bool
	}
	for _, tc := range []struct {
		name string
		req  *kmspb.EncryptRequest
		want answer
	}{
		{"both checksums", &kmspb.EncryptRequest{Name: key, Plaintext: pt, AdditionalAuthenticatedData: aad, PlaintextCrc32C: crc(pt), AdditionalAuthenticatedDataCrc32C: crc(aad)},
			answer{codes.OK, "", true, true}},
		{"no checksums", &kmspb.EncryptRequest{Name: key, Plaintext: pt, AdditionalAuthenticatedData: aad},
			answer{codes.OK, "", false, false}},
		{"bad plaintext checksum", &kmspb.EncryptRequest{Name: key, Plaintext: pt, PlaintextCrc32C: bad},
			answer{codes.InvalidArgument, "The checksum in field plaintext_crc32c did not match the data in field plaintext.", false, false}},
		{"bad aad checksum", &kmspb.EncryptRequest{Name: key, Plaintext: pt, AdditionalAuthenticatedData: aad, AdditionalAuthenticatedDataCrc32C: bad},
			answer{codes.InvalidArgument, "The checksum in field additional_authenticated_data_crc32c did not match the data in field additional_authenticated_data.", false, false}},
		{"unknown key", &kmspb.EncryptRequest{Name: key + "x", Plaintext: pt},
			answer{codes.PermissionDenied, "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource '" + key + "x' (or it may not exist).", false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.Encrypt(t.Context(), tc.req)
			st := status.Convert(err)
			got := answer{st.Code(), st.Message(), resp.GetVerifiedPlaintextCrc32C(), resp.GetVerifiedAdditionalAuthenticatedDataCrc32C()}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Encrypt (-want +got):\n%s", diff)
			}
			if err == nil {
				if diff := cmp.Diff(crc(resp.GetCiphertext()).GetValue(), resp.GetCiphertextCrc32C().GetValue()); diff != "" {
					t.Errorf("ciphertext_crc32c (-want +got):\n%s", diff)
				}
			}
		})
	}

	enc, err := c.Encrypt(t.Context(), &kmspb.EncryptRequest{Name: key, Plaintext: pt, AdditionalAuthenticatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Decrypt(t.Context(), &kmspb.DecryptRequest{Name: key, Ciphertext: enc.GetCiphertext(), AdditionalAuthenticatedData: aad, CiphertextCrc32C: bad})
	if diff := cmp.Diff(codes.InvalidArgument, status.Code(err)); diff != "" {
		t.Errorf("Decrypt with a bad ciphertext checksum (-want +got):\n%s", diff)
	}
	dec, err := c.Decrypt(t.Context(), &kmspb.DecryptRequest{Name: key, Ciphertext: enc.GetCiphertext(), AdditionalAuthenticatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{pt, crc(pt).GetValue(), true}, []any{dec.GetPlaintext(), dec.GetPlaintextCrc32C().GetValue(), dec.GetUsedPrimary()}); diff != "" {
		t.Errorf("Decrypt (-want +got):\n%s", diff)
	}
}

func TestVersionLifecycle(t *testing.T) {
	srv := gcpkmstest.Start(t)
	c := dial(t, srv)
	ctx := t.Context()
	if _, err := c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{
		Parent: "projects/p/locations/global/keyRings/r", CryptoKeyId: "k",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT},
	}); err != nil {
		t.Fatal(err)
	}
	v2, err := c.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: key})
	if err != nil {
		t.Fatal(err)
	}
	ck, err := c.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: key})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{key + "/cryptoKeyVersions/2", key + "/cryptoKeyVersions/1"}, []string{v2.GetName(), ck.GetPrimary().GetName()}); diff != "" {
		t.Errorf("a new version is not primary (-want +got):\n%s", diff)
	}

	step := func(name string, err error, want codes.Code) {
		t.Helper()
		if got := status.Code(err); got != want {
			t.Errorf("%s: %v, want %s", name, err, want)
		}
	}
	disable := &kmspb.UpdateCryptoKeyVersionRequest{
		CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: v2.GetName(), State: kmspb.CryptoKeyVersion_DISABLED},
		UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}},
	}
	_, err = c.UpdateCryptoKeyVersion(ctx, disable)
	step("disable v2", err, codes.OK)
	_, err = c.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: key, CryptoKeyVersionId: "2"})
	step("make disabled v2 primary", err, codes.FailedPrecondition)
	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: v2.GetName(), Plaintext: []byte("x")})
	step("encrypt with disabled v2", err, codes.FailedPrecondition)
	_, err = c.UpdateCryptoKeyVersion(ctx, &kmspb.UpdateCryptoKeyVersionRequest{CryptoKeyVersion: disable.GetCryptoKeyVersion(), UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels"}}})
	step("update another field", err, codes.InvalidArgument)
	_, err = c.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: key, CryptoKeyVersionId: "9"})
	step("make a missing version primary", err, codes.NotFound)
	_, err = c.ListKeyRings(ctx, &kmspb.ListKeyRingsRequest{Parent: "projects/p/locations/global"})
	step("an unimplemented method", err, codes.Unimplemented)

	var got []string
	for _, call := range srv.Calls() {
		got = append(got, call.Method+" "+call.Code.String())
	}
	want := []string{"CreateCryptoKey OK", "CreateCryptoKeyVersion OK", "GetCryptoKey OK", "UpdateCryptoKeyVersion OK",
		"UpdateCryptoKeyPrimaryVersion FailedPrecondition", "Encrypt FailedPrecondition", "UpdateCryptoKeyVersion InvalidArgument",
		"UpdateCryptoKeyPrimaryVersion NotFound", "ListKeyRings Unimplemented"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("recorded calls (-want +got):\n%s", diff)
	}
}

func TestFaults(t *testing.T) {
	srv := gcpkmstest.Start(t)
	if err := srv.CreateKey(key); err != nil {
		t.Fatal(err)
	}
	c := dial(t, srv)
	get := func() codes.Code {
		_, err := c.GetCryptoKey(t.Context(), &kmspb.GetCryptoKeyRequest{Name: key})
		return status.Code(err)
	}
	srv.FailNext(2, codes.ResourceExhausted, "GetCryptoKey")
	srv.FailNext(1, codes.Unavailable, "Encrypt")
	got := []codes.Code{get(), get(), get()}
	if diff := cmp.Diff([]codes.Code{codes.ResourceExhausted, codes.ResourceExhausted, codes.OK}, got); diff != "" {
		t.Errorf("FailNext (-want +got):\n%s", diff)
	}

	srv.Stop()
	if code := get(); code != codes.Unavailable {
		t.Errorf("stopped server: %s, want Unavailable", code)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	_, err := c.GetCryptoKey(t.Context(), &kmspb.GetCryptoKeyRequest{Name: key}, grpc.WaitForReady(true))
	if err != nil {
		t.Errorf("restarted server: %v", err)
	}
}
