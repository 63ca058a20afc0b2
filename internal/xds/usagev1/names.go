package usagev1

// Ops are the operations a Record may name. The controller counts any
// other name as "other", so its metric labels stay a fixed set.
var Ops = []string{"encrypt", "decrypt", "rewrap"}

// Reasons are the failure reasons a Record may count: the sidecar's
// reason labels (cryptoapi.Reason, which a test holds to this list). The
// controller counts any other reason as "other".
var Reasons = []string{
	"auth_failed", "malformed", "unsupported_format", "bad_context", "too_large",
	"unknown_keyset", "unknown_version", "revoked", "not_ready", "keyset_required",
	"batch_too_large", "permission_denied", "bad_mac", "canceled", "internal",
}
