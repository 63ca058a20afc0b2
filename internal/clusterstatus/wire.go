package clusterstatus

import (
	"time"

	"github.com/keyshift/keyshift/internal/rotation"
)

// ControllerPath is the controller's read-only status endpoint, served on
// its metrics address beside /healthz and /metrics.
const ControllerPath = "/v1/status"

// ControllerStatus is the JSON the controller answers on ControllerPath:
// who answered, whether it leads (only the leader counts ACKs and takes
// steps; a follower lists no keysets), and what its rotation engine last
// found for each keyset it manages.
type ControllerStatus struct {
	Identity string                 `json:"identity"`
	Leading  bool                   `json:"leading"`
	Time     time.Time              `json:"time"`
	Keysets  []rotation.KeysetState `json:"keysets"`
}
