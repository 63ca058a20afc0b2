// Package injector is keyshift's mutating admission webhook: it adds the
// keyshift sidecar to pods that ask for it with annotations.
//
// The package owns three things, kept apart on purpose:
//
//   - Inject, a pure function from a Pod and the cluster-wide Config to the
//     injected Pod. It reads the pod's annotations (package annotation)
//     into a typed PodConfig, refuses bad values with messages that say
//     what to write instead, and adds the sidecar: a native sidecar (an
//     init container with restartPolicy Always whose startup probe holds
//     the app back until the keys are loaded) or, for older clusters, a
//     regular container; the shared in-memory socket volume; one Secret
//     volume per keyset; KEYSHIFT_SOCKET in every app container; and the
//     keyshift.io/status annotation that makes a second pass a no-op.
//   - Diff, which turns the before and after JSON into an RFC 6902 patch,
//     so no patch is ever written by hand.
//   - The HTTPS server: /mutate (Handler, admission.k8s.io/v1), /healthz,
//     /readyz and /metrics, a certificate reloaded from disk when it
//     changes, bounded requests and a graceful shutdown.
package injector
