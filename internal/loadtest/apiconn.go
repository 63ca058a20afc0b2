package loadtest

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// SocketTarget is a server of keyshift's Crypto API on a Unix socket: the
// sidecar, or its floor. One item is the unary RPC, several the batch RPC.
func SocketTarget(name, describe, socket, keyset string) (*Target, error) {
	pid, err := peerPID(socket)
	if err != nil {
		return nil, err
	}
	return &Target{Name: name, Describe: describe, PID: pid, Dial: func(context.Context) (Conn, error) {
		cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		return &apiConn{cc: cc, api: v1.NewCryptoClient(cc), keyset: keyset}, nil
	}}, nil
}

type apiConn struct {
	cc     *grpc.ClientConn
	api    v1.CryptoClient
	keyset string
	// reqs keeps the request built for each payload list, so the load
	// tool spends no allocations of its own per call.
	enc   *v1.EncryptRequest
	encB  *v1.EncryptBatchRequest
	ct    [][]byte
	dec   *v1.DecryptRequest
	decB  *v1.DecryptBatchRequest
	rw    *v1.RewrapRequest
	rwB   *v1.RewrapBatchRequest
	encPT [][]byte
}

func (c *apiConn) Close() error { return c.cc.Close() }

// itemErr fails a batch call with the first failed item's code.
func itemErr[R interface{ GetError() *v1.ItemError }](results []R) error {
	for _, r := range results {
		if e := r.GetError(); e != nil {
			return status.Error(codes.Code(e.GetCode()), "batch item: "+e.GetMessage())
		}
	}
	return nil
}

func same(a, b [][]byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (c *apiConn) Encrypt(ctx context.Context, pts [][]byte) ([][]byte, error) {
	if len(pts) == 1 {
		if c.enc == nil || !same(c.encPT, pts) {
			c.enc, c.encPT = &v1.EncryptRequest{Keyset: c.keyset, Plaintext: pts[0]}, pts
		}
		r, err := c.api.Encrypt(ctx, c.enc)
		if err != nil {
			return nil, err
		}
		return [][]byte{r.GetCiphertext()}, nil
	}
	if c.encB == nil || !same(c.encPT, pts) {
		c.encB, c.encPT = &v1.EncryptBatchRequest{}, pts
		for _, p := range pts {
			c.encB.Items = append(c.encB.Items, &v1.EncryptRequest{Keyset: c.keyset, Plaintext: p})
		}
	}
	r, err := c.api.EncryptBatch(ctx, c.encB)
	if err != nil {
		return nil, err
	}
	if err := itemErr(r.GetResults()); err != nil {
		return nil, err
	}
	out := make([][]byte, len(r.GetResults()))
	for i, res := range r.GetResults() {
		out[i] = res.GetOk().GetCiphertext()
	}
	return out, nil
}

func (c *apiConn) prepare(cts [][]byte) {
	if same(c.ct, cts) && c.dec != nil {
		return
	}
	c.ct = cts
	c.dec, c.rw = &v1.DecryptRequest{Ciphertext: cts[0]}, &v1.RewrapRequest{Ciphertext: cts[0]}
	c.decB, c.rwB = &v1.DecryptBatchRequest{}, &v1.RewrapBatchRequest{}
	for _, ct := range cts {
		c.decB.Items = append(c.decB.Items, &v1.DecryptRequest{Ciphertext: ct})
		c.rwB.Items = append(c.rwB.Items, &v1.RewrapRequest{Ciphertext: ct})
	}
}

func (c *apiConn) Decrypt(ctx context.Context, cts [][]byte) error {
	c.prepare(cts)
	if len(cts) == 1 {
		_, err := c.api.Decrypt(ctx, c.dec)
		return err
	}
	r, err := c.api.DecryptBatch(ctx, c.decB)
	if err != nil {
		return err
	}
	return itemErr(r.GetResults())
}

func (c *apiConn) Rewrap(ctx context.Context, cts [][]byte) error {
	c.prepare(cts)
	if len(cts) == 1 {
		_, err := c.api.Rewrap(ctx, c.rw)
		return err
	}
	r, err := c.api.RewrapBatch(ctx, c.rwB)
	if err != nil {
		return err
	}
	return itemErr(r.GetResults())
}
