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
//     volume per keyset; the KMS settings Secret (keyshift.io/kms-env-from)
//     as the sidecar's envFrom; KEYSHIFT_SOCKET in every app container;
//     and the keyshift.io/status annotation that makes a second pass a
//     no-op.
//   - Diff, which turns the before and after JSON into an RFC 6902 patch,
//     so no patch is ever written by hand.
//   - The HTTPS server: /mutate (Handler, admission.k8s.io/v1), /healthz,
//     /readyz and /metrics, bounded requests and a graceful shutdown. Its
//     certificate comes either from files reloaded when they change
//     (written by cert-manager, say), or, with SelfSignedConfig, from the
//     injector itself: a CA and a serving certificate in a Secret that
//     every replica serves from and renews in place (Create and Update at
//     a resourceVersion settle races between replicas), with the CA
//     bundle kept in the webhook configuration's caBundle.
package injector
