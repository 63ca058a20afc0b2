// Package providers assembles the KMS backends compiled into keyshift into
// one kms.Registry. It is the only package that imports every backend.
package providers

import (
	"log/slog"

	"github.com/keyshift/keyshift/internal/kms"
	awskms "github.com/keyshift/keyshift/internal/kms/aws"
	"github.com/keyshift/keyshift/internal/kms/gcp"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/kms/vault"
)

// Registry returns a new registry of every backend, keyed by URI scheme.
// Backends log through log (nil discards).
func Registry(log *slog.Logger) kms.Registry {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return kms.Registry{
		local.Scheme:  local.Open,
		awskms.Scheme: awskms.Opener(log),
		gcp.Scheme:    gcp.Opener(log),
		vault.Scheme:  vault.Opener(log),
	}
}
