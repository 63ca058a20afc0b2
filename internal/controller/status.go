package controller

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/keyshift/keyshift/internal/clusterstatus"
)

// serveStatus answers GET /v1/status: what the rotation engine last found
// for each keyset (outcome, blocked reason, ACK count of a pending
// version), read-only, for `keyshift status --cluster`. A replica that
// does not lead says so and lists nothing: only the leader counts ACKs.
// It names keysets, versions and pods, never a key.
func (c *Controller) serveStatus(w http.ResponseWriter, _ *http.Request) {
	st := clusterstatus.ControllerStatus{Identity: c.cfg.Identity, Leading: c.acting.Load(), Time: time.Now().UTC(), Keysets: c.eng.States()}
	if !st.Leading {
		st.Keysets = nil
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(st)
}
