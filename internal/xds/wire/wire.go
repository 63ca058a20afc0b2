// Package wire owns the xDS contract between the controller (package xds)
// and the sidecar (package xdsclient): the type URL and resource names
// keysets travel under, how a keyset document sits in an SDS Secret, the
// node ID a sidecar presents, and how it presents its token. Both ends
// import it and neither imports the other, so the two cannot drift apart.
// The KeyUsage service the sidecar reports to is the generated package
// usagev1, shared the same way.
package wire

import (
	"fmt"
	"net"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// SecretType is the SDS type URL keysets travel as.
const SecretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// ResourcePrefix starts every keyset resource name.
const ResourcePrefix = "keyshift/"

// ResourceName is the xDS resource name of keyset name.
func ResourceName(name string) string { return ResourcePrefix + name }

// KeysetName is the keyset a resource name stands for; false when the
// resource is not a keyset (no ResourcePrefix, or nothing after it).
func KeysetName(resource string) (string, bool) {
	name, ok := strings.CutPrefix(resource, ResourcePrefix)
	return name, ok && name != ""
}

// Encode makes the SDS resource that carries keyset name's document: a
// generic secret named ResourceName(name) whose inline bytes are doc.
func Encode(name string, doc []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: ResourceName(name),
		Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: doc}},
		}},
	}
}

// Decode extracts the keyset name and document from an SDS resource made
// by Encode. It refuses a resource of another type, a Secret that is not a
// keyset, and one without inline bytes.
func Decode(a *anypb.Any) (name string, doc []byte, err error) {
	var sec tlsv3.Secret
	if err := a.UnmarshalTo(&sec); err != nil {
		return "", nil, fmt.Errorf("xds: resource is not a Secret: %w", err)
	}
	name, ok := KeysetName(sec.GetName())
	if !ok {
		return "", nil, fmt.Errorf("xds: resource %q is not a keyshift keyset", sec.GetName())
	}
	b := sec.GetGenericSecret().GetSecret().GetInlineBytes()
	if len(b) == 0 {
		return "", nil, fmt.Errorf("xds: resource %q carries no inline bytes", sec.GetName())
	}
	return name, b, nil
}

// NodeID is the xDS node ID of a sidecar in pod of namespace:
// namespace/pod. The controller serves a stream from the snapshot of the
// namespace its node ID names, once it has checked that is the
// authenticated pod's own.
func NodeID(namespace, pod string) string { return namespace + "/" + pod }

// SplitNodeID is the inverse of NodeID; ok is false when node has no '/'.
func SplitNodeID(node string) (namespace, pod string, ok bool) {
	return strings.Cut(node, "/")
}

// TokenAudience is the audience of the projected ServiceAccount token a
// sidecar presents to the controller: the injector projects it, the
// controller accepts no other by default.
const TokenAudience = "keyshift.io/xds"

// AuthorizationKey is the gRPC metadata key the sidecar's token travels in,
// as Bearer(token).
const AuthorizationKey = "authorization"

const bearerPrefix = "Bearer "

// Bearer is the AuthorizationKey value that presents token.
func Bearer(token string) string { return bearerPrefix + token }

// ParseBearer is the token of an AuthorizationKey value; false when the
// value is not a bearer token or the token is empty.
func ParseBearer(v string) (string, bool) {
	tok, ok := strings.CutPrefix(v, bearerPrefix)
	return tok, ok && tok != ""
}

// Loopback reports whether addr (host:port, or unix://) stays on this
// host: the only addresses keysets may travel to without TLS and a token,
// for the controller's listener as for the sidecar's dial.
func Loopback(addr string) bool {
	if strings.HasPrefix(addr, "unix:") {
		return true
	}
	host, _, err := net.SplitHostPort(strings.TrimPrefix(addr, "dns:///"))
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
