package loadtest

import (
	"context"
	"log/slog"
	"os"

	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/internal/sidecar/floor"
)

// ServeFloor serves the like-for-like floor on a Unix socket at path
// until ctx ends, through sidecar.ServeAPI: the sidecar's listener, peer
// check (this process's UID, as the sidecar's default), gRPC options and
// interceptors, HTTP/JSON beside gRPC. It is the cost of the sidecar's
// transport with nothing behind it, so sidecar/floor is what the crypto
// and bookkeeping cost, per op mix and batch size.
func ServeFloor(ctx context.Context, path string) (wait func(), err error) {
	return sidecar.ServeAPI(ctx, path, []uint32{uint32(os.Getuid())}, floor.New(), slog.New(slog.DiscardHandler))
}
