package aws

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/kms"
)

// sdkError builds the error the SDK returns for an HTTP answer with an AWS
// error in it: an OperationError around a ResponseError around the typed
// (or generic) API error.
func sdkError(op string, status int, requestID string, api error) error {
	return &smithy.OperationError{ServiceID: "KMS", OperationName: op, Err: &awshttp.ResponseError{
		RequestID: requestID,
		ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
			Err:      api,
		},
	}}
}

func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		name       string
		op         string
		err        error
		wantKind   error
		wantCode   string
		wantDetail string
	}{
		{"disabled", opEncrypt, sdkError(opEncrypt, 400, "r-1", &types.DisabledException{Message: smithyString("alias/app is disabled.")}),
			kms.ErrUserInduced, "DisabledException", "the key is disabled"},
		{"not found", opDecrypt, sdkError(opDecrypt, 400, "", &types.NotFoundException{}), kms.ErrUserInduced, "NotFoundException", "no such key"},
		{"invalid state", opDecrypt, sdkError(opDecrypt, 400, "", &types.KMSInvalidStateException{}), kms.ErrUserInduced, "KMSInvalidStateException", "current state"},
		{"access denied (generic, as KMS sends it)", opGenerateDataKey,
			sdkError(opGenerateDataKey, 400, "", &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "not authorized"}),
			kms.ErrUserInduced, "AccessDeniedException", "needs kms:GenerateDataKey"},
		{"access denied on ReEncrypt", opReEncrypt,
			sdkError(opReEncrypt, 400, "", &smithy.GenericAPIError{Code: "AccessDeniedException"}),
			kms.ErrUserInduced, "AccessDeniedException", "kms:ReEncryptFrom and kms:ReEncryptTo"},
		{"incorrect key", opDecrypt, sdkError(opDecrypt, 400, "", &types.IncorrectKeyException{}), kms.ErrUserInduced, "IncorrectKeyException", "different KMS key"},
		{"throttling", opDecrypt, sdkError(opDecrypt, 400, "", &smithy.GenericAPIError{Code: "ThrottlingException", Message: "Rate exceeded"}),
			kms.ErrThrottled, "ThrottlingException", "throttling"},
		{"limit exceeded", opEncrypt, sdkError(opEncrypt, 400, "", &types.LimitExceededException{}), kms.ErrThrottled, "LimitExceededException", "throttling"},
		{"on-demand rotation quota", opRotate, sdkError(opRotate, 400, "", &types.LimitExceededException{}),
			kms.ErrUserInduced, "LimitExceededException", "quota of on-demand rotations"},
		{"HTTP 429 with an unknown code", opEncrypt, sdkError(opEncrypt, 429, "", &smithy.GenericAPIError{Code: "SlowDownPlease"}), kms.ErrThrottled, "SlowDownPlease", ""},
		{"internal", opEncrypt, sdkError(opEncrypt, 500, "", &types.KMSInternalException{}), kms.ErrUnavailable, "KMSInternalException", "failed or timed out"},
		{"dependency timeout", opEncrypt, sdkError(opEncrypt, 500, "", &types.DependencyTimeoutException{}), kms.ErrUnavailable, "DependencyTimeoutException", ""},
		{"key unavailable", opEncrypt, sdkError(opEncrypt, 500, "", &types.KeyUnavailableException{}), kms.ErrUnavailable, "KeyUnavailableException", ""},
		{"unknown server fault", opEncrypt, &smithy.OperationError{Err: &smithy.GenericAPIError{Code: "Weird", Fault: smithy.FaultServer}}, kms.ErrUnavailable, "Weird", ""},
		{"unknown code on HTTP 503", opEncrypt, sdkError(opEncrypt, 503, "", &smithy.GenericAPIError{Code: "Weird"}), kms.ErrUnavailable, "Weird", ""},
		{"unknown code on HTTP 400", opEncrypt, sdkError(opEncrypt, 400, "", &smithy.GenericAPIError{Code: "Weird"}), kms.ErrUserInduced, "Weird", ""},
		{"invalid ciphertext", opDecrypt, sdkError(opDecrypt, 400, "", &types.InvalidCiphertextException{}), kms.ErrCorrupt, "InvalidCiphertextException", "does not verify"},
		{"not implemented", opRotate, sdkError(opRotate, 501, "", errors.New("deserialization failed")), ErrNotSupported, "", "does not implement RotateKeyOnDemand"},
		{"unreadable 502", opEncrypt, sdkError(opEncrypt, 502, "", errors.New("deserialization failed")), kms.ErrUnavailable, "", "unreadable answer"},
		{"connection refused", opEncrypt, &smithy.OperationError{Err: &smithyhttp.RequestSendError{Err: refused}}, kms.ErrUnavailable, "", "cannot reach KMS: connection refused"},
		{"deadline", opEncrypt, &smithy.OperationError{Err: &smithyhttp.RequestSendError{Err: fmt.Errorf("dial: %w", context.DeadlineExceeded)}}, kms.ErrUnavailable, "", "no answer in time"},
		{"no credentials", opEncrypt, &smithy.OperationError{Err: errors.New("get identity: get credentials: failed to refresh cached credentials, no EC2 IMDS role found")},
			kms.ErrUnavailable, "", "cannot get AWS credentials"},
		{"web identity refused", opEncrypt, &smithy.OperationError{Err: fmt.Errorf("get identity: get credentials: %w",
			&smithy.GenericAPIError{Code: "InvalidIdentityToken", Message: "Incorrect token audience"})},
			kms.ErrUserInduced, "InvalidIdentityToken", "refused the credentials"},
		{"bad signature", opEncrypt, sdkError(opEncrypt, 400, "", &smithy.GenericAPIError{Code: "UnrecognizedClientException"}), kms.ErrUserInduced, "UnrecognizedClientException", "refused the credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := classify(tc.op, "alias/app", tc.err)
			if !errors.Is(e, tc.wantKind) {
				t.Errorf("kind %v, want %v", e.Kind, tc.wantKind)
			}
			if e.Code != tc.wantCode {
				t.Errorf("code %q, want %q", e.Code, tc.wantCode)
			}
			if !strings.Contains(e.Error(), tc.wantDetail) || !strings.HasPrefix(e.Error(), "aws-kms: "+tc.op+" alias/app: ") {
				t.Errorf("error %q does not start aws-kms: %s alias/app: or lacks %q", e, tc.op, tc.wantDetail)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	err := classify(opEncrypt, "alias/app", sdkError(opEncrypt, 400, "0f6a-req",
		&types.DisabledException{Message: smithyString("alias/app is disabled.")}))
	want := "aws-kms: Encrypt alias/app: the key is disabled: enable it (aws kms enable-key) or point the URI at an enabled key: " +
		"AWS says alias/app is disabled. (DisabledException, HTTP 400, request 0f6a-req): " + kms.ErrUserInduced.Error()
	if diff := cmp.Diff(want, err.Error()); diff != "" {
		t.Errorf("error text (-want +got):\n%s", diff)
	}
	var typed *types.DisabledException
	if !errors.As(err, &typed) {
		t.Error("the typed AWS error is not reachable with errors.As")
	}
	if kms.Reason(err) != "user_induced" || kms.Retryable(err) {
		t.Errorf("reason %q, retryable %v", kms.Reason(err), kms.Retryable(err))
	}
}

// TestQuietCodes checks that a message that may quote request values is
// kept out of the error, and out of its cause chain.
func TestQuietCodes(t *testing.T) {
	const secret = "00112233445566778899aabbccddeeff"
	err := classify(opEncrypt, "alias/app", sdkError(opEncrypt, 400, "",
		&smithy.GenericAPIError{Code: "ValidationException", Message: "Value '" + secret + "' at 'plaintext' failed"}))
	if !errors.Is(err, kms.ErrUserInduced) || err.Code != "ValidationException" {
		t.Fatalf("got %v", err)
	}
	for e := error(err); e != nil; {
		if strings.Contains(e.Error(), secret) {
			t.Fatalf("the cause chain quotes the request: %q", e)
		}
		u, ok := e.(interface{ Unwrap() []error })
		if !ok {
			break
		}
		var next error
		for _, c := range u.Unwrap() {
			if c != nil && !errors.Is(c, kms.ErrUserInduced) {
				next = c
			}
		}
		e = next
	}
}

func smithyString(s string) *string { return &s }
