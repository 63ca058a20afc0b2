// Package podspec holds what the injector writes into a pod and the
// sidecar (and the app's client) must find there: the socket's path and
// the variable that names it, and the sidecar's ops port. Both sides
// import these names, so they cannot drift apart.
package podspec

const (
	// SocketEnv is the environment variable that tells apps (and the
	// sidecar itself) where the socket is; the injector sets it in every
	// container.
	SocketEnv = "KEYSHIFT_SOCKET"
	// SocketDir is where the injector mounts the shared socket volume
	// unless a pod asks for another directory.
	SocketDir = "/var/run/keyshift"
	// SocketFile is the socket's file name in that directory.
	SocketFile = "keyshift.sock"
	// Socket is the default socket path.
	Socket = SocketDir + "/" + SocketFile
	// OpsPort serves the sidecar's /livez, /readyz and /metrics; the
	// injector points the kubelet's probes at it.
	OpsPort = 9495
)
