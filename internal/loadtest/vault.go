package loadtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// openVault measures Vault Transit as an app would use it for its data:
// each message sent to Vault's encrypt endpoint (batch_input for a batch),
// each ciphertext to decrypt (rewrap for Rewrap). The address is
// http(s)://HOST:PORT/MOUNT/KEY (the Transit mount path, then the key
// name; a mount with slashes works); the token is $VAULT_TOKEN. Each client
// has one keep-alive HTTP connection, as each keyshift client has one
// gRPC connection.
func openVault(_ context.Context, p PeerSpec, _ Options) (*Target, error) {
	u, err := url.Parse(p.Address)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--peer vault=%q: write http://HOST:PORT/MOUNT/KEY", p.Address)
	}
	path := strings.Trim(u.Path, "/")
	i := strings.LastIndexByte(path, '/')
	if i <= 0 {
		return nil, fmt.Errorf("--peer vault=%q: the path must be the Transit mount then the key, e.g. /transit/bench", p.Address)
	}
	mount, key := path[:i], path[i+1:]
	token := os.Getenv("VAULT_TOKEN")
	if token == "" {
		return nil, fmt.Errorf("--peer vault: set VAULT_TOKEN")
	}
	base := u.Scheme + "://" + u.Host + "/v1/" + mount
	return &Target{
		Name:     "vault",
		Describe: "Vault Transit " + mount + "/" + key + " at " + u.Host + " (HTTP/JSON, one keep-alive connection per client)",
		Dial: func(context.Context) (Conn, error) {
			tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}
			return &vaultConn{hc: &http.Client{Transport: tr}, base: base, key: key, token: token}, nil
		},
	}, nil
}

type vaultConn struct {
	hc               *http.Client
	base, key, token string
}

func (c *vaultConn) Close() error { c.hc.CloseIdleConnections(); return nil }

type vaultItem struct {
	Plaintext  string `json:"plaintext,omitempty"`
	Ciphertext string `json:"ciphertext,omitempty"`
	Error      string `json:"error,omitempty"`
}

type vaultReply struct {
	Data struct {
		vaultItem
		BatchResults []vaultItem `json:"batch_results"`
	} `json:"data"`
	Errors []string `json:"errors"`
}

// VaultError is a failed Transit call: the HTTP status and Vault's errors.
type VaultError struct {
	Status int
	Errors []string
}

func (e *VaultError) Error() string {
	return fmt.Sprintf("vault: HTTP %d: %s", e.Status, strings.Join(e.Errors, "; "))
}

// call posts one request for items (a single item as the plain form, more
// as batch_input) to the Transit endpoint op and returns the items back.
func (c *vaultConn) call(ctx context.Context, op string, items []vaultItem) ([]vaultItem, error) {
	var body any = items[0]
	if len(items) > 1 {
		body = map[string]any{"batch_input": items}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/"+op+"/"+c.key, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r vaultReply
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, &VaultError{Status: resp.StatusCode, Errors: []string{"unreadable reply"}}
	}
	if resp.StatusCode != http.StatusOK || len(r.Errors) > 0 {
		return nil, &VaultError{Status: resp.StatusCode, Errors: r.Errors}
	}
	if len(items) == 1 {
		return []vaultItem{r.Data.vaultItem}, nil
	}
	if len(r.Data.BatchResults) != len(items) {
		return nil, &VaultError{Status: resp.StatusCode, Errors: []string{fmt.Sprintf("%d results for %d items", len(r.Data.BatchResults), len(items))}}
	}
	for _, it := range r.Data.BatchResults {
		if it.Error != "" {
			return nil, &VaultError{Status: resp.StatusCode, Errors: []string{"batch item: " + it.Error}}
		}
	}
	return r.Data.BatchResults, nil
}

func (c *vaultConn) Encrypt(ctx context.Context, pts [][]byte) ([][]byte, error) {
	items := make([]vaultItem, len(pts))
	for i, p := range pts {
		items[i].Plaintext = base64.StdEncoding.EncodeToString(p)
	}
	out, err := c.call(ctx, "encrypt", items)
	if err != nil {
		return nil, err
	}
	cts := make([][]byte, len(out))
	for i, it := range out {
		cts[i] = []byte(it.Ciphertext)
	}
	return cts, nil
}

func cipherItems(cts [][]byte) []vaultItem {
	items := make([]vaultItem, len(cts))
	for i, ct := range cts {
		items[i].Ciphertext = string(ct)
	}
	return items
}

func (c *vaultConn) Decrypt(ctx context.Context, cts [][]byte) error {
	out, err := c.call(ctx, "decrypt", cipherItems(cts))
	if err != nil {
		return err
	}
	for _, it := range out {
		if _, err := base64.StdEncoding.DecodeString(it.Plaintext); err != nil {
			return fmt.Errorf("vault: decrypt returned no base64 plaintext")
		}
	}
	return nil
}

func (c *vaultConn) Rewrap(ctx context.Context, cts [][]byte) error {
	_, err := c.call(ctx, "rewrap", cipherItems(cts))
	return err
}
