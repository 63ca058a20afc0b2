// Package annotation owns every pod annotation keyshift reads or writes.
// It is the one place to look up what an app team may write on a pod
// template, what each value means, and its default. It has no
// dependencies, so tools and tests can import it freely.
//
// A pod asks for the sidecar with Inject; everything else is optional:
//
//	metadata:
//	  annotations:
//	    keyshift.io/inject: "true"
//	    keyshift.io/keysets: "payments,users=users-keyset"
//	    keyshift.io/kms-env-from: "kms-credentials"   # optional
//
// A bad value never passes silently: the injector denies the pod and the
// message names the annotation and what to write instead.
package annotation

// Prefix starts every keyshift annotation. On a pod that asks for
// injection, an unknown key with this prefix is denied, so a typo cannot
// silently leave a setting at its default.
const Prefix = "keyshift.io/"

// Inject turns injection on for a pod: "true" injects the sidecar,
// "false" (or no annotation) leaves the pod untouched. Nothing else is
// accepted.
const Inject = Prefix + "inject"

// Keysets lists the keysets the sidecar serves, comma-separated, each
// NAME or NAME=SECRET. NAME is the keyset's name (a DNS-1123 label, as in
// the keyset document); SECRET is the Secret in the pod's namespace that
// holds it under the key "keyset.json" and defaults to NAME. Each Secret
// is mounted read-only into the sidecar only. Required when Inject is
// "true". Example: "payments,users=users-keyset".
const Keysets = Prefix + "keysets"

// SocketDir is the directory, in the sidecar and in every app container,
// that holds the sidecar's Unix socket (keyshift.sock). It is a shared
// in-memory emptyDir. Default "/var/run/keyshift"; it must be an absolute,
// clean path that is not a system directory and not already mounted by an
// app container.
const SocketDir = Prefix + "socket-dir"

// ExtAuthz makes the sidecar also serve the Envoy ext_authz API on a
// localhost port, for a proxy in the same pod: "false" (default), "true"
// (port 9191) or a port number from 1024 to 65535.
const ExtAuthz = Prefix + "ext-authz"

// ExtAuthzPolicy names the ConfigMap, in the pod's namespace, whose key
// "policy.yaml" is the ext_authz policy (see examples/extauthz-policy.yaml).
// Required when ExtAuthz is on: ext_authz without a policy would decide
// nothing.
const ExtAuthzPolicy = Prefix + "ext-authz-policy"

// ExtAuthzAllowedUIDs says which peer UIDs may call ext_authz: "any" or a
// comma-separated list. Default "1337", the UID Istio's proxy runs as
// (Envoy's own image runs as 101).
const ExtAuthzAllowedUIDs = Prefix + "ext-authz-allowed-uids"

// AllowedUIDs says which peer UIDs may call the socket (the sidecar checks
// SO_PEERCRED): "any", "self" (the sidecar's own UID only) or a
// comma-separated list such as "1000,1001". By default the injector derives
// the list from the runAsUser of the containers that get the socket, plus
// the sidecar's own UID, and falls back to "any" when some container's UID
// is not set in the pod spec (the image decides it, so the injector cannot
// know it).
const AllowedUIDs = Prefix + "allowed-uids"

// CPURequest, CPULimit, MemoryRequest and MemoryLimit override the
// sidecar's resources with Kubernetes quantities ("50m", "64Mi"). A
// request may not exceed its limit. Defaults come from the injector's
// flags.
const (
	CPURequest    = Prefix + "cpu-request"
	CPULimit      = Prefix + "cpu-limit"
	MemoryRequest = Prefix + "memory-request"
	MemoryLimit   = Prefix + "memory-limit"
)

// LogLevel is the sidecar's log level: "debug", "info" (default), "warn"
// or "error".
const LogLevel = Prefix + "log-level"

// OpsPort is the port the sidecar serves /livez, /readyz and /metrics on
// (the kubelet probes it). Default 9495; change it only when an app in the
// pod already uses that port. A number from 1024 to 65535.
const OpsPort = Prefix + "ops-port"

// KMSEnvFrom names a Secret, in the pod's namespace, whose keys become
// environment variables of the sidecar alone (envFrom with a secretRef):
// how the sidecar gets its KMS configuration and credentials, such as
// AWS_REGION, AWS_ENDPOINT_URL_KMS, AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY for AWS KMS, or VAULT_ADDR and VAULT_TOKEN for
// Vault. App containers never see them. The value is one Secret name (a
// DNS-1123 subdomain such as "kms-credentials"); the Secret must exist
// when the pod starts, or the kubelet holds the sidecar (and, with a
// native sidecar, the whole pod) back. Keys that are not valid variable
// names are skipped by the kubelet, and a variable the injector sets
// itself (KEYSHIFT_SOCKET, POD_NAMESPACE, POD_NAME) wins over a key of
// the same name. Prefer ambient credentials (IRSA, Workload Identity,
// Vault Kubernetes auth) where the platform has them; this is for the
// rest. Default: none.
const KMSEnvFrom = Prefix + "kms-env-from"

// Status is written by the injector, never by people: its presence marks a
// pod as already injected, so a second pass (a re-invoked webhook, a pod
// re-submitted with its status) leaves the pod alone. Its value is a small
// JSON record of what was injected.
const Status = Prefix + "status"

// Known returns every annotation the injector reads or writes, in the
// order the documentation presents them. It is a function, not a variable,
// so no caller can change the list another relies on.
func Known() []string {
	return []string{
		Inject, Keysets, SocketDir, ExtAuthz, ExtAuthzPolicy, ExtAuthzAllowedUIDs, AllowedUIDs,
		CPURequest, CPULimit, MemoryRequest, MemoryLimit, LogLevel, OpsPort, KMSEnvFrom, Status,
	}
}
