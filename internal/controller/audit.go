package controller

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

// openAudit loads (or on first start creates) the audit key and opens the
// AuditLog copy. It reserves AuditKMS in policy, so no keyset may name it.
func (c *Config) openAudit(ctx context.Context, policy *rotation.KMSPolicy, log *slog.Logger) (*audit.Key, *audit.Log, error) {
	var h audit.KeyHolder
	if c.Kube == nil {
		path := c.AuditKeyFile
		if path == "" {
			if c.AuditLog == "" {
				return nil, nil, errors.New("with --keyset-dir and no --audit-log, give --audit-key-file: where to keep the audit key")
			}
			path = filepath.Join(filepath.Dir(c.AuditLog), AuditKeyFileName)
		}
		h = audit.KeyFile{Path: path}
	} else {
		if c.AuditKeyFile != "" {
			return nil, nil, errors.New("--audit-key-file is for --keyset-dir; in a cluster the audit key is kept in --audit-key-secret")
		}
		h = kube.AuditKeySecret{Client: c.Kube, Namespace: c.systemNamespace(), Name: c.AuditKeySecret}
	}
	if c.AuditKMS == "" {
		log.Warn("no --audit-kms: the audit key is kept unwrapped, so whoever can read "+h.String()+" can forge audit records; give the controller a KMS key of its own with --audit-kms", "audit_key", h.String())
	} else {
		policy.Reserved = append(policy.Reserved, c.AuditKMS)
		for ns, prefixes := range policy.Allow {
			for _, p := range prefixes {
				if strings.HasPrefix(c.AuditKMS, p) {
					log.Warn("--audit-kms is a KMS key that keysets may name (--allow-kms "+ns+"="+p+"): the audit key should be under a key no pod's KMS role may use; keysets naming that exact key are refused", "namespace", ns)
				}
			}
		}
	}
	var key *audit.Key
	var info audit.KeyInfo
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		var err error
		key, info, err = audit.LoadKey(ctx, h, c.KMS, c.AuditKMS)
		if err == nil {
			break
		}
		if !transient(err) {
			return nil, nil, err
		}
		log.Warn("loading the audit key failed; retrying", "audit_key", h.String(), "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(wait):
		}
	}
	log.Info("audit key loaded", "audit_key", h.String(), "key_id", info.ID, "kms", info.KMS, "created", info.Created)
	if info.RewrappedFrom != "" {
		log.Warn("audit key re-wrapped under --audit-kms: the same key, so existing chains verify; if anyone could write "+h.String()+" before, delete it instead to start new chains", "key_id", info.ID, "from", info.RewrappedFrom, "kms", info.KMS)
	}
	if c.AuditLog == "" {
		return key, nil, nil
	}
	trail, err := audit.OpenKeyed(c.AuditLog, key)
	if err != nil {
		return nil, nil, err
	}
	return key, trail, nil
}

// transient reports whether loading the audit key may work on a retry:
// not for a bad URI or key, a refusing KMS, or missing RBAC.
func transient(err error) bool {
	for _, e := range []error{audit.ErrBadKey, kms.ErrBadURI, kms.ErrUnknownScheme, kms.ErrUserInduced, kms.ErrCorrupt} {
		if errors.Is(err, e) {
			return false
		}
	}
	return !apierrors.IsForbidden(err) && !apierrors.IsUnauthorized(err)
}
