package wire_test

import (
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keyshift/keyshift/internal/xds/wire"
)

// The type URL is the one go-control-plane's snapshot cache files Secrets
// under and the one a packed Secret carries; a mismatch would leave every
// subscription unanswered.
func TestSecretType(t *testing.T) {
	a, err := anypb.New(&tlsv3.Secret{})
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range []string{resource.SecretType, a.GetTypeUrl()} {
		if got != wire.SecretType {
			t.Errorf("type URL %q, wire.SecretType %q", got, wire.SecretType)
		}
	}
}

// Encode then Decode gives back the name and the document, and the
// resource has the layout both ends have always used.
func TestRoundTrip(t *testing.T) {
	doc := []byte(`{"name":"payments","versions":[]}`)
	sec := wire.Encode("payments", doc)
	want := &tlsv3.Secret{
		Name: "keyshift/payments",
		Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: doc}},
		}},
	}
	if !proto.Equal(want, sec) {
		t.Fatalf("Encode = %v, want %v", sec, want)
	}
	a, err := anypb.New(sec)
	if err != nil {
		t.Fatal(err)
	}
	// Through the bytes a stream carries.
	b, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	var got anypb.Any
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	name, gotDoc, err := wire.Decode(&got)
	if err != nil {
		t.Fatal(err)
	}
	if name != "payments" || string(gotDoc) != string(doc) {
		t.Fatalf("Decode = %q, %q; want %q, %q", name, gotDoc, "payments", doc)
	}
}

// Decode refuses anything Encode does not make.
func TestDecodeRefuses(t *testing.T) {
	pack := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	relabelled := pack(wire.Encode("payments", []byte("{}")))
	relabelled.TypeUrl = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	for name, c := range map[string]struct {
		a    *anypb.Any
		want string
	}{
		"another type":          {pack(&cluster.Cluster{Name: "keyshift/payments"}), "not a Secret"},
		"a Secret relabelled":   {relabelled, "not a Secret"},
		"another secret":        {pack(&tlsv3.Secret{Name: "payments"}), "not a keyshift keyset"},
		"prefix without a name": {pack(wire.Encode("", []byte("{}"))), "not a keyshift keyset"},
		"no inline bytes":       {pack(wire.Encode("payments", nil)), "no inline bytes"},
		"a TLS certificate": {pack(&tlsv3.Secret{Name: "keyshift/payments", Type: &tlsv3.Secret_TlsCertificate{
			TlsCertificate: &tlsv3.TlsCertificate{}}}), "no inline bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			n, doc, err := wire.Decode(c.a)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Decode = %q, %q, %v; want an error saying %q", n, doc, err, c.want)
			}
		})
	}
}

func TestKeysetName(t *testing.T) {
	for res, want := range map[string]string{
		"keyshift/payments": "payments",
		"keyshift/":         "",
		"payments":          "",
		"other/payments":    "",
		"":                  "",
	} {
		got, ok := wire.KeysetName(res)
		if ok != (want != "") || (ok && got != want) {
			t.Errorf("KeysetName(%q) = %q, %v; want %q", res, got, ok, want)
		}
	}
	if got, ok := wire.KeysetName(wire.ResourceName("orders")); !ok || got != "orders" {
		t.Errorf("KeysetName(ResourceName(orders)) = %q, %v", got, ok)
	}
}

func TestNodeID(t *testing.T) {
	id := wire.NodeID("shop", "web-1")
	if id != "shop/web-1" {
		t.Fatalf("NodeID = %q", id)
	}
	ns, pod, ok := wire.SplitNodeID(id)
	if diff := cmp.Diff([]any{"shop", "web-1", true}, []any{ns, pod, ok}); diff != "" {
		t.Fatalf("SplitNodeID (-want +got):\n%s", diff)
	}
	if _, _, ok := wire.SplitNodeID("web-1"); ok {
		t.Fatal("SplitNodeID accepted a node ID without a namespace")
	}
}

func TestBearer(t *testing.T) {
	if got := wire.Bearer("tok"); got != "Bearer tok" {
		t.Fatalf("Bearer = %q", got)
	}
	for v, want := range map[string]string{"Bearer tok": "tok", "Bearer ": "", "bearer tok": "", "Basic dTpw": "", "tok": ""} {
		got, ok := wire.ParseBearer(v)
		if ok != (want != "") || (ok && got != want) {
			t.Errorf("ParseBearer(%q) = %q, %v; want %q", v, got, ok, want)
		}
	}
	if got, ok := wire.ParseBearer(wire.Bearer("a.b.c")); !ok || got != "a.b.c" {
		t.Errorf("ParseBearer(Bearer(a.b.c)) = %q, %v", got, ok)
	}
}
