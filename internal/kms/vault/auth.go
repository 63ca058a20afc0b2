package vault

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keyshift/keyshift/internal/kms"
)

// authState holds the client's Vault token: how to get one (a fixed token,
// a token file or a Kubernetes login), whether the current one is believed
// valid, and the goroutine that renews it.
type authState struct {
	c         *Client
	token     string
	tokenFile string
	k8s       *KubernetesAuth

	mu          sync.Mutex
	gen         uint64 // counts successful logins; a 403 invalidates only the generation it saw
	valid       bool
	stopped     bool
	stopWatcher chan struct{} // closes the current renewal goroutine
	wg          sync.WaitGroup
}

func newAuthState(c *Client, cfg config) *authState {
	return &authState{c: c, token: cfg.token, tokenFile: cfg.tokenFile, k8s: cfg.k8s}
}

// canRelogin reports whether getting a token again may give a different one.
func (a *authState) canRelogin() bool { return a.tokenFile != "" || a.k8s != nil }

// ensure makes sure the client holds a token, logging in if needed, and
// returns the token's generation. Errors are *Error with Op "login".
func (a *authState) ensure(ctx context.Context) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		return 0, &Error{Op: "login", Detail: "client closed", Kind: kms.ErrUnavailable}
	}
	if a.valid {
		return a.gen, nil
	}
	secret, err := a.login(ctx)
	if err != nil {
		return 0, err
	}
	a.c.api.SetToken(secret.Auth.ClientToken)
	a.gen++
	a.valid = true
	if a.stopWatcher != nil {
		close(a.stopWatcher)
		a.stopWatcher = nil
	}
	a.watch(ctx, secret, a.gen)
	return a.gen, nil
}

// invalidate marks the token of generation gen as refused, so the next call
// logs in again.
func (a *authState) invalidate(gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen == gen {
		a.valid = false
	}
}

// stop ends renewal and waits for its goroutine.
func (a *authState) stop() {
	a.mu.Lock()
	if !a.stopped {
		a.stopped = true
		if a.stopWatcher != nil {
			close(a.stopWatcher)
			a.stopWatcher = nil
		}
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// login gets a token. For a fixed token or a token file it also looks the
// token up, to learn whether and when it must be renewed.
func (a *authState) login(ctx context.Context) (*vaultapi.Secret, error) {
	switch {
	case a.k8s != nil:
		return a.kubernetesLogin(ctx)
	case a.tokenFile != "":
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return nil, &Error{Op: "login", Detail: "read token file " + a.tokenFile + ": " + fsReason(err), Kind: kms.ErrUserInduced}
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, &Error{Op: "login", Detail: "token file " + a.tokenFile + " is empty", Kind: kms.ErrUserInduced}
		}
		return a.lookup(ctx, tok), nil
	default:
		return a.lookup(ctx, a.token), nil
	}
}

// lookup returns a secret for tok carrying its TTL and renewability as
// lookup-self reports them. A failed lookup is not an error here: the token
// may lack lookup-self, and a bad token shows up as 403 on the real call.
func (a *authState) lookup(ctx context.Context, tok string) *vaultapi.Secret {
	secret := &vaultapi.Secret{Auth: &vaultapi.SecretAuth{ClientToken: tok}}
	lc, err := a.c.api.CloneWithHeaders()
	if err != nil {
		return secret
	}
	lc.SetToken(tok)
	lctx, cancel := context.WithTimeout(ctx, a.c.caller.Timeout)
	defer cancel()
	s, err := lc.Auth().Token().LookupSelfWithContext(lctx)
	if err != nil || s == nil {
		a.c.log.Debug("vault-transit: token lookup failed; the token will not be renewed", slog.String("reason", kms.Reason(classify("lookup-self", "auth/token/lookup-self", err))))
		return secret
	}
	ttl, _ := s.TokenTTL()
	renewable, _ := s.TokenIsRenewable()
	secret.Auth.LeaseDuration = int(ttl / time.Second)
	secret.Auth.Renewable = renewable
	return secret
}

// kubernetesLogin posts the pod's service-account JWT and role to
// auth/MOUNT/login. The JWT is read at every login: projected tokens rotate.
func (a *authState) kubernetesLogin(ctx context.Context) (*vaultapi.Secret, error) {
	path := "auth/" + a.k8s.Mount + "/login"
	jwt, err := os.ReadFile(a.k8s.TokenFile)
	if err != nil {
		return nil, &Error{Op: "login", Path: path, Detail: "read service-account token " + a.k8s.TokenFile + ": " + fsReason(err), Kind: kms.ErrUserInduced}
	}
	lc, err := a.c.api.CloneWithHeaders() // keeps the namespace header
	if err != nil {
		return nil, &Error{Op: "login", Path: path, Detail: "clone client", Kind: kms.ErrUnavailable, Err: err}
	}
	lc.ClearToken()
	lctx, cancel := context.WithTimeout(ctx, a.c.caller.Timeout)
	defer cancel()
	s, err := lc.Logical().WriteWithContext(lctx, path, map[string]any{
		"role": a.k8s.Role,
		"jwt":  strings.TrimSpace(string(jwt)),
	})
	if err == nil && s == nil {
		err = errNotFound
	}
	if err != nil {
		e := classify("login", path, err)
		if e.StatusCode == 400 || e.StatusCode == 403 {
			e.Detail = fmt.Sprintf("role %q: %s", a.k8s.Role, e.Detail)
		}
		return nil, e
	}
	if s.Auth == nil || s.Auth.ClientToken == "" {
		return nil, &Error{Op: "login", Path: path, StatusCode: 200, Detail: "answer lacks a token", Kind: kms.ErrUnavailable}
	}
	a.c.log.Info("vault-transit: logged in with Kubernetes auth", slog.String("role", a.k8s.Role),
		slog.String("auth_mount", a.k8s.Mount), slog.Int("ttl_seconds", s.Auth.LeaseDuration), slog.Bool("renewable", s.Auth.Renewable))
	return s, nil
}

// watch renews the token of generation gen with a LifetimeWatcher while it
// can, and when renewal ends (max TTL reached, token revoked, Vault gone too
// long) invalidates it and logs in again at once. Tokens without a TTL (root,
// periodic-less static tokens) are not watched. Call with a.mu held.
func (a *authState) watch(_ context.Context, secret *vaultapi.Secret, gen uint64) {
	if secret.Auth.LeaseDuration <= 0 {
		return
	}
	w, err := a.c.api.NewLifetimeWatcher(&vaultapi.LifetimeWatcherInput{
		Secret:        secret,
		RenewBehavior: vaultapi.RenewBehaviorIgnoreErrors,
	})
	if err != nil {
		a.c.log.Warn("vault-transit: cannot watch token lifetime", slog.String("error", err.Error()))
		return
	}
	stop := make(chan struct{})
	a.stopWatcher = stop
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		w.Start()
	}()
	go func() {
		defer a.wg.Done()
		defer w.Stop()
		for {
			select {
			case <-stop:
				return
			case r := <-w.RenewCh():
				ttl := 0
				if r != nil && r.Secret != nil && r.Secret.Auth != nil {
					ttl = r.Secret.Auth.LeaseDuration
				}
				a.c.log.Debug("vault-transit: token renewed", slog.Int("ttl_seconds", ttl))
			case err := <-w.DoneCh():
				reason := "lifetime over"
				if err != nil {
					reason = "renewal failed"
				}
				a.c.log.Info("vault-transit: token renewal ended; authenticating again", slog.String("reason", reason))
				a.invalidate(gen)
				if !a.canRelogin() {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), a.c.caller.Timeout)
				_, lerr := a.ensure(ctx)
				cancel()
				if lerr != nil {
					// The next call tries again, with its own retries.
					a.c.log.Warn("vault-transit: login after renewal failed", slog.String("reason", kms.Reason(lerr)), slog.String("error", lerr.Error()))
				}
				return
			}
		}
	}()
}

func fsReason(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	return "unreadable"
}
