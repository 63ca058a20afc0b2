// Package providers assembles the KMS backends compiled into keyshift into
// one kms.Registry. It is the only package that imports every backend.
package providers

import (
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
)

// Registry returns a new registry of every backend, keyed by URI scheme.
func Registry() kms.Registry {
	return kms.Registry{
		local.Scheme: local.Open,
	}
}
