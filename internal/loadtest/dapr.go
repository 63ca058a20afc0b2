package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keyshift/keyshift/internal/loadtest/daprpb"
)

// daprChunk is the most plaintext or ciphertext one stream message carries;
// Dapr's scheme seals in 64 KiB segments, so larger payloads go as several
// messages of one stream, as Dapr's SDKs send them.
const daprChunk = 64 << 10

// openDapr connects to a running daprd's gRPC API and measures Dapr's
// high-level crypto API: dapr.proto.runtime.v1.Dapr's EncryptAlpha1 and
// DecryptAlpha1 streams, through the crypto component the address names.
// The address is
//
//	unix:///path/to/dapr-APPID-grpc.socket?component=NAME&key=NAME[&wrap=ALG][&cipher=CIPHER]
//	HOST:PORT?component=NAME&key=NAME[&wrap=ALG][&cipher=CIPHER]
//
// where component is the crypto component's name (metadata.name in its
// YAML), key the key's name in that component (for crypto.dapr.localstorage,
// the file name in its directory), wrap the key-wrap algorithm (A256KW when
// unset; also A128CBC, A192CBC, A256CBC, RSA-OAEP-256) and cipher the data
// cipher (Dapr's default, aes-gcm, when unset; or chacha20-poly1305). For
// example:
//
//	--peer dapr='unix:///tmp/d/dapr-bench-grpc.socket?component=keys&key=bench-key&wrap=A256KW'
//
// Each client gets its own grpc.ClientConn. Dapr has no batch crypto call,
// so an Encrypt or Decrypt of n items is n streams one after another on
// that connection, each a whole request (options and data in its first
// message) and response: the load tool counts it as one call, and its
// latency is the sum. Dapr has no rewrap: Rewrap returns ErrUnsupported.
// On a Unix socket the target's PID is daprd's (SO_PEERCRED), so its memory
// and CPU are sampled; over TCP it is 0.
//
// Dapr's DecryptAlpha1 is not safe under concurrent load (v1.14.0, and
// dapr/kit's schemes/enc/v1 is unchanged since): readHeader returns the
// manifest and MAC as slices of a buffer it has already put back in
// BufPool, so a concurrent stream can overwrite them before they are
// parsed. Some decryptions then fail with Internal "failed to decode
// header's signature", and sooner or later encoding/json panics ("JSON
// decoder out of sync") in a gRPC handler with no recover, which kills
// daprd. Seen here with 4 clients (about 0.3% errors) and 16 (daprd dead
// within 90 s in both runs). Those errors are Dapr's, not this client's;
// an encrypt-only mix is unaffected.
func openDapr(_ context.Context, p PeerSpec, _ Options) (*Target, error) {
	cfg, err := parseDaprAddress(p.Address)
	if err != nil {
		return nil, err
	}
	var pid int32
	if path, ok := strings.CutPrefix(cfg.target, "unix://"); ok {
		if pid, err = peerPID(path); err != nil {
			return nil, fmt.Errorf("dapr: %w", err)
		}
	}
	enc := &daprpb.EncryptRequestOptions{
		ComponentName:        cfg.component,
		KeyName:              cfg.key,
		KeyWrapAlgorithm:     cfg.wrap,
		DataEncryptionCipher: cfg.cipher,
	}
	dec := &daprpb.DecryptRequestOptions{ComponentName: cfg.component}
	cipher := cfg.cipher
	if cipher == "" {
		cipher = "aes-gcm"
	}
	return &Target{
		Name: "dapr",
		Describe: fmt.Sprintf("Dapr sidecar (daprd) at %s: gRPC EncryptAlpha1/DecryptAlpha1 streams, component %q, key %q, wrap %s, cipher %s; "+
			"no batch call, so n items are n sequential streams", cfg.target, cfg.component, cfg.key, cfg.wrap, cipher),
		PID: pid,
		Dial: func(ctx context.Context) (Conn, error) {
			cc, err := grpc.NewClient(cfg.target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return nil, fmt.Errorf("loadtest: dapr: %w", err)
			}
			return &daprConn{cc: cc, api: daprpb.NewDaprClient(cc), enc: enc, dec: dec}, nil
		},
		Close: func() {},
	}, nil
}

type daprAddress struct {
	target                       string // for grpc.NewClient
	component, key, wrap, cipher string
}

// parseDaprAddress reads the --peer dapr= address (see openDapr).
func parseDaprAddress(s string) (daprAddress, error) {
	target, query, _ := strings.Cut(s, "?")
	bad := func(why string) (daprAddress, error) {
		return daprAddress{}, fmt.Errorf("loadtest: --peer dapr=%q: %s (want unix:///path/to/socket?component=NAME&key=NAME[&wrap=A256KW] or HOST:PORT?component=...)", s, why)
	}
	if target == "" {
		return bad("no address")
	}
	if path, ok := strings.CutPrefix(target, "unix://"); ok && !strings.HasPrefix(path, "/") {
		return bad("the socket path must be absolute (unix:///...)")
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return bad(err.Error())
	}
	a := daprAddress{target: target, component: q.Get("component"), key: q.Get("key"), wrap: q.Get("wrap"), cipher: q.Get("cipher")}
	for k := range q {
		switch k {
		case "component", "key", "wrap", "cipher":
		default:
			return bad("unknown parameter " + k)
		}
	}
	if a.component == "" || a.key == "" {
		return bad("component and key are required")
	}
	if a.wrap == "" {
		a.wrap = "A256KW"
	}
	return a, nil
}

// daprConn is one client's connection to daprd.
type daprConn struct {
	cc  *grpc.ClientConn
	api daprpb.DaprClient
	enc *daprpb.EncryptRequestOptions
	dec *daprpb.DecryptRequestOptions
}

func (c *daprConn) Encrypt(ctx context.Context, plaintexts [][]byte) ([][]byte, error) {
	out := make([][]byte, len(plaintexts))
	for i, pt := range plaintexts {
		ct, err := daprStream(ctx, c.api.EncryptAlpha1, pt, func(data []byte, seq uint64) *daprpb.EncryptRequest {
			r := &daprpb.EncryptRequest{Payload: &daprpb.StreamPayload{Data: data, Seq: seq}}
			if seq == 0 {
				r.Options = c.enc
			}
			return r
		}, (*daprpb.EncryptResponse).GetPayload)
		if err != nil {
			return nil, err
		}
		out[i] = ct
	}
	return out, nil
}

func (c *daprConn) Decrypt(ctx context.Context, ciphertexts [][]byte) error {
	for _, ct := range ciphertexts {
		if _, err := daprStream(ctx, c.api.DecryptAlpha1, ct, func(data []byte, seq uint64) *daprpb.DecryptRequest {
			r := &daprpb.DecryptRequest{Payload: &daprpb.StreamPayload{Data: data, Seq: seq}}
			if seq == 0 {
				r.Options = c.dec
			}
			return r
		}, (*daprpb.DecryptResponse).GetPayload); err != nil {
			return err
		}
	}
	return nil
}

// Rewrap is not offered: Dapr has no call that re-seals without plaintext.
func (c *daprConn) Rewrap(context.Context, [][]byte) error { return ErrUnsupported }

func (c *daprConn) Close() error { return c.cc.Close() }

// daprStream runs one EncryptAlpha1 or DecryptAlpha1 stream: it sends in
// as numbered chunks (the first carrying the options, via req), half-closes,
// and gathers the numbered chunks of the answer until the server ends the
// stream. Any error the server ends it with (a failed decryption, say) is
// returned, even when some output came first.
func daprStream[Req any, Resp any](ctx context.Context,
	open func(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[Req, Resp], error),
	in []byte, req func(data []byte, seq uint64) *Req, payload func(*Resp) *daprpb.StreamPayload,
) ([]byte, error) {
	// Cancelling ends the stream on every return, also the early ones.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := open(ctx)
	if err != nil {
		return nil, err
	}
	for seq := uint64(0); seq == 0 || len(in) > 0; seq++ {
		n := min(len(in), daprChunk)
		if err := s.Send(req(in[:n], seq)); err != nil {
			if errors.Is(err, io.EOF) {
				break // the server ended the stream; Recv says why
			}
			return nil, err
		}
		in = in[n:]
	}
	if err := s.CloseSend(); err != nil {
		return nil, err
	}
	var out []byte
	for want := uint64(0); ; want++ {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		p := payload(r)
		if p.GetSeq() != want {
			return nil, fmt.Errorf("loadtest: dapr: chunk %d out of order (want %d)", p.GetSeq(), want)
		}
		out = append(out, p.GetData()...)
	}
}
