package cryptoapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/xds/usagev1"
)

// Every reason label the service can give is one the usage reports to the
// controller may carry, so no failure is counted as "other" there.
func TestReasonsAreTheWireContract(t *testing.T) {
	errs := []error{
		envelope.ErrDecrypt, envelope.ErrMalformed, envelope.ErrUnsupportedFormat, envelope.ErrBadContext, envelope.ErrTooLarge,
		ErrUnknownKeyset, ErrUnknownKeyVersion, ErrRevoked, ErrNotReady, ErrKeysetRequired, ErrBatchTooLarge,
		ErrPermissionDenied, ErrBadMAC, context.Canceled, context.DeadlineExceeded, errors.New("anything else"),
	}
	seen := map[string]bool{}
	for _, err := range errs {
		r := Reason(fmt.Errorf("wrapped: %w", err))
		if !slices.Contains(usagev1.Reasons, r) {
			t.Errorf("Reason(%v) = %q, which usagev1.Reasons does not list", err, r)
		}
		seen[r] = true
	}
	for _, r := range usagev1.Reasons {
		if !seen[r] {
			t.Errorf("usagev1.Reasons lists %q, which Reason never gives", r)
		}
	}
}
