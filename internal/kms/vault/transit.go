package vault

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keyshift/keyshift/internal/kms"
)

// DEKSize is the size in bytes of the data keys GenerateDataKey returns.
const DEKSize = 32

// contextPrefix starts every derivation context, so that an empty aad still
// gives the non-empty context a derived key requires.
const contextPrefix = "keyshift:"

// aeadTypes are the Transit key types that accept associated_data.
var aeadTypes = map[string]bool{"aes128-gcm96": true, "aes256-gcm96": true, "chacha20-poly1305": true}

// KeyInfo is what Vault reports about the Transit key (transit/keys/NAME).
type KeyInfo struct {
	// Name is the key's name.
	Name string
	// Type is the key type, e.g. "aes256-gcm96".
	Type string
	// Derived is true for keys created with derived=true (aad bound as context).
	Derived bool
	// LatestVersion is the version that encrypts: the primary KEK version.
	LatestVersion int
	// MinDecryptionVersion is the oldest version Vault still decrypts with.
	MinDecryptionVersion int
	// MinEncryptionVersion is the oldest version a caller may ask to encrypt with (0: any).
	MinEncryptionVersion int
}

func (c *Client) path(op string) string { return c.mount + "/" + op + "/" + c.key }

func (c *Client) write(path string, body map[string]any) func(ctx context.Context) (*vaultapi.Secret, error) {
	return func(ctx context.Context) (*vaultapi.Secret, error) {
		s, err := c.api.Logical().WriteWithContext(ctx, path, body)
		if err == nil && s == nil {
			err = errNotFound
		}
		return s, err
	}
}

// KeyInfo reads the Transit key's metadata. The token needs read on
// MOUNT/keys/NAME.
func (c *Client) KeyInfo(ctx context.Context) (KeyInfo, error) {
	path := c.path("keys")
	s, err := c.call(ctx, "read-key", path, nil, func(ctx context.Context) (*vaultapi.Secret, error) {
		s, err := c.api.Logical().ReadWithContext(ctx, path)
		if err == nil && s == nil {
			err = errNotFound
		}
		return s, err
	})
	if err != nil {
		return KeyInfo{}, err
	}
	info := KeyInfo{Name: c.key}
	var ok [4]bool
	info.Type, ok[0] = s.Data["type"].(string)
	info.Derived, _ = s.Data["derived"].(bool)
	info.LatestVersion, ok[1] = intField(s.Data["latest_version"])
	info.MinDecryptionVersion, ok[2] = intField(s.Data["min_decryption_version"])
	info.MinEncryptionVersion, ok[3] = intField(s.Data["min_encryption_version"])
	if ok != [4]bool{true, true, true, true} || info.LatestVersion < 1 {
		return KeyInfo{}, &Error{Op: "read-key", Path: path, StatusCode: http.StatusOK, Detail: "answer lacks type or version fields", Kind: kms.ErrUnavailable}
	}
	return info, nil
}

// PrimaryKEKVersion reports the Transit key's latest version, the one Wrap
// encrypts with, as a decimal string ("3").
func (c *Client) PrimaryKEKVersion(ctx context.Context) (string, error) {
	info, err := c.KeyInfo(ctx)
	if err != nil {
		return "", err
	}
	return strconv.Itoa(info.LatestVersion), nil
}

// Rotate adds a new version to the Transit key and reports it. Older
// versions keep decrypting down to min_decryption_version. A rotation that
// may have reached Vault is not retried, so one call never adds two versions.
func (c *Client) Rotate(ctx context.Context) (string, error) {
	path := c.path("keys") + "/rotate"
	_, err := c.call(ctx, "rotate", path, notSent, func(ctx context.Context) (*vaultapi.Secret, error) {
		// Vault answers 204 or the key's metadata depending on version; either is success.
		s, err := c.api.Logical().WriteWithContext(ctx, path, nil)
		if err == nil && s == nil {
			s = &vaultapi.Secret{}
		}
		return s, err
	})
	if err != nil {
		return "", err
	}
	v, err := c.PrimaryKEKVersion(ctx)
	if err == nil {
		c.log.Info("vault-transit: KEK rotated", slog.String("kek_version", v))
	}
	return v, err
}

// resolveBinding returns the aad binding, reading the key once in auto mode.
func (c *Client) resolveBinding(ctx context.Context) (Binding, error) {
	c.bindMu.Lock()
	b := c.binding
	c.bindMu.Unlock()
	if b != "" {
		return b, nil
	}
	info, err := c.KeyInfo(ctx)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Op == "read-key" && e.StatusCode == http.StatusForbidden {
			return "", fmt.Errorf("%w (the token is invalid, or it may not read %s, which aad=auto needs: grant read, or set aad=context for a derived key or aad=associated_data)", err, c.path("keys"))
		}
		return "", err
	}
	switch {
	case info.Derived:
		b = BindContext
	case aeadTypes[info.Type]:
		b = BindAssociatedData
	default:
		return "", &Error{Op: "read-key", Path: c.path("keys"),
			Detail: fmt.Sprintf("key type %q can bind no aad; create the key with derived=true (recommended) or type aes256-gcm96", info.Type),
			Kind:   kms.ErrUserInduced}
	}
	c.bindMu.Lock()
	c.binding = b
	c.bindMu.Unlock()
	c.log.Debug("vault-transit: aad binding chosen", slog.String("binding", string(b)), slog.String("key_type", info.Type))
	return b, nil
}

func bindAAD(body map[string]any, b Binding, aad []byte) {
	switch b {
	case BindContext:
		body["context"] = base64.StdEncoding.EncodeToString(append([]byte(contextPrefix), aad...))
	case BindAssociatedData:
		if len(aad) > 0 {
			body["associated_data"] = base64.StdEncoding.EncodeToString(aad)
		}
	}
}

// Wrap encrypts dek with transit/encrypt under the key's latest version,
// binding aad as the key's binding mode says.
func (c *Client) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	b, err := c.resolveBinding(ctx)
	if err != nil {
		return kms.WrappedKey{}, err
	}
	path := c.path("encrypt")
	body := map[string]any{"plaintext": base64.StdEncoding.EncodeToString(dek)}
	bindAAD(body, b, aad)
	s, err := c.call(ctx, "encrypt", path, nil, c.write(path, body))
	if err != nil {
		return kms.WrappedKey{}, err
	}
	return wrappedFrom("encrypt", path, s)
}

// Unwrap decrypts a key wrapped by Wrap, GenerateDataKey or Rewrap with
// transit/decrypt.
func (c *Client) Unwrap(ctx context.Context, w kms.WrappedKey, aad []byte) ([]byte, error) {
	path := c.path("decrypt")
	if err := checkWrapped("decrypt", path, w); err != nil {
		return nil, err
	}
	b, err := c.resolveBinding(ctx)
	if err != nil {
		return nil, err
	}
	body := map[string]any{"ciphertext": string(w.Ciphertext)}
	bindAAD(body, b, aad)
	s, err := c.call(ctx, "decrypt", path, nil, c.write(path, body))
	if err != nil {
		return nil, err
	}
	dek, err := bytesField(s, "plaintext")
	if err != nil {
		return nil, &Error{Op: "decrypt", Path: path, StatusCode: http.StatusOK, Detail: err.Error(), Kind: kms.ErrUnavailable}
	}
	return dek, nil
}

// GenerateDataKey returns a fresh 256-bit DEK and its wrapped form. With a
// derived key (or an empty aad) Vault makes the key (transit/datakey/plaintext);
// with associated_data binding and a non-empty aad, Vault's datakey endpoint
// cannot bind the aad, so the DEK comes from crypto/rand and is wrapped.
func (c *Client) GenerateDataKey(ctx context.Context, aad []byte) ([]byte, kms.WrappedKey, error) {
	b, err := c.resolveBinding(ctx)
	if err != nil {
		return nil, kms.WrappedKey{}, err
	}
	if b == BindAssociatedData && len(aad) > 0 {
		dek := make([]byte, DEKSize)
		if _, err := rand.Read(dek); err != nil {
			return nil, kms.WrappedKey{}, fmt.Errorf("vault-transit: %w", err)
		}
		w, err := c.Wrap(ctx, dek, aad)
		if err != nil {
			clear(dek)
			return nil, kms.WrappedKey{}, err
		}
		return dek, w, nil
	}
	path := c.path("datakey/plaintext")
	body := map[string]any{"bits": DEKSize * 8}
	bindAAD(body, b, aad)
	s, err := c.call(ctx, "datakey", path, nil, c.write(path, body))
	if err != nil {
		return nil, kms.WrappedKey{}, err
	}
	w, err := wrappedFrom("datakey", path, s)
	if err != nil {
		return nil, kms.WrappedKey{}, err
	}
	dek, err := bytesField(s, "plaintext")
	if err == nil && len(dek) != DEKSize {
		clear(dek)
		err = fmt.Errorf("plaintext of %d bytes, want %d", len(dek), DEKSize)
	}
	if err != nil {
		return nil, kms.WrappedKey{}, &Error{Op: "datakey", Path: path, StatusCode: http.StatusOK, Detail: err.Error(), Kind: kms.ErrUnavailable}
	}
	return dek, w, nil
}

// GenerateWrappedDataKey returns only the wrapped form of a fresh 256-bit
// DEK, for a caller (such as the rotation controller) that should never hold
// the plaintext: with a derived key or an empty aad it is made inside Vault
// (transit/datakey/wrapped). Otherwise it falls back to GenerateDataKey and
// zeroes the plaintext.
func (c *Client) GenerateWrappedDataKey(ctx context.Context, aad []byte) (kms.WrappedKey, error) {
	b, err := c.resolveBinding(ctx)
	if err != nil {
		return kms.WrappedKey{}, err
	}
	if b == BindAssociatedData && len(aad) > 0 {
		dek, w, err := c.GenerateDataKey(ctx, aad)
		clear(dek)
		return w, err
	}
	path := c.path("datakey/wrapped")
	body := map[string]any{"bits": DEKSize * 8}
	bindAAD(body, b, aad)
	s, err := c.call(ctx, "datakey", path, nil, c.write(path, body))
	if err != nil {
		return kms.WrappedKey{}, err
	}
	return wrappedFrom("datakey", path, s)
}

// Rewrap re-encrypts a wrapped key under the Transit key's latest version
// (after Rotate) without changing the DEK, so min_decryption_version can
// then be raised. With a derived key (or an empty aad) the DEK never leaves
// Vault (transit/rewrap); with associated_data binding and a non-empty aad,
// Vault's rewrap cannot take the aad, so the key is unwrapped and wrapped
// again here and the plaintext zeroed.
func (c *Client) Rewrap(ctx context.Context, w kms.WrappedKey, aad []byte) (kms.WrappedKey, error) {
	path := c.path("rewrap")
	if err := checkWrapped("rewrap", path, w); err != nil {
		return kms.WrappedKey{}, err
	}
	b, err := c.resolveBinding(ctx)
	if err != nil {
		return kms.WrappedKey{}, err
	}
	if b == BindAssociatedData && len(aad) > 0 {
		dek, err := c.Unwrap(ctx, w, aad)
		if err != nil {
			return kms.WrappedKey{}, err
		}
		defer clear(dek)
		return c.Wrap(ctx, dek, aad)
	}
	body := map[string]any{"ciphertext": string(w.Ciphertext)}
	bindAAD(body, b, aad)
	s, err := c.call(ctx, "rewrap", path, nil, c.write(path, body))
	if err != nil {
		return kms.WrappedKey{}, err
	}
	return wrappedFrom("rewrap", path, s)
}

// checkWrapped refuses a wrapped key that is not a Transit ciphertext, or
// whose recorded KEK version disagrees with its own prefix, before any call.
func checkWrapped(op, path string, w kms.WrappedKey) error {
	v, err := kekVersion(string(w.Ciphertext))
	if err != nil {
		return &Error{Op: op, Path: path, Detail: err.Error(), Kind: kms.ErrCorrupt}
	}
	if w.KEKVersion != "" && w.KEKVersion != v {
		return &Error{Op: op, Path: path, Detail: fmt.Sprintf("wrapped key says KEK version %q but its ciphertext is version %q", w.KEKVersion, v), Kind: kms.ErrCorrupt}
	}
	return nil
}

// kekVersion reads N from a Transit ciphertext "vault:vN:...".
func kekVersion(ct string) (string, error) {
	rest, ok := strings.CutPrefix(ct, "vault:v")
	if !ok {
		return "", errors.New(`not a Transit ciphertext (no "vault:vN:" prefix)`)
	}
	v, _, ok := strings.Cut(rest, ":")
	n, err := strconv.Atoi(v)
	if !ok || err != nil || n < 1 || strconv.Itoa(n) != v {
		return "", errors.New(`not a Transit ciphertext (bad "vault:vN:" version)`)
	}
	return v, nil
}

func wrappedFrom(op, path string, s *vaultapi.Secret) (kms.WrappedKey, error) {
	ct, _ := s.Data["ciphertext"].(string)
	v, err := kekVersion(ct)
	if err != nil {
		return kms.WrappedKey{}, &Error{Op: op, Path: path, StatusCode: http.StatusOK, Detail: "answer lacks a ciphertext: " + err.Error(), Kind: kms.ErrUnavailable}
	}
	return kms.WrappedKey{Ciphertext: []byte(ct), KEKVersion: v}, nil
}

func bytesField(s *vaultapi.Secret, name string) ([]byte, error) {
	str, ok := s.Data[name].(string)
	if !ok {
		return nil, fmt.Errorf("answer lacks %s", name)
	}
	b, err := base64.StdEncoding.DecodeString(str)
	if err != nil {
		return nil, fmt.Errorf("answer's %s is not base64", name)
	}
	return b, nil
}

func intField(v any) (int, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return int(i), err == nil
	case float64:
		return int(n), true
	case int:
		return n, true
	}
	return 0, false
}
