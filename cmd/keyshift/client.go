package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
	"github.com/keyshift/keyshift/sidecar/client"
)

// contextFlags collects repeated --context KEY=VALUE.
type contextFlags map[string]string

func (c contextFlags) String() string { return fmt.Sprint(map[string]string(c)) }
func (c contextFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, for example tenant=acme")
	}
	c[k] = val
	return nil
}

type clientFlags struct {
	socket  *string
	keyset  *string
	raw     *bool
	timeout *time.Duration
	context contextFlags
}

func addClientFlags(fs *flag.FlagSet, withKeyset bool) *clientFlags {
	f := &clientFlags{context: contextFlags{}}
	f.socket = fs.String("socket", envOr(client.EnvSocket, client.DefaultSocket), "the sidecar's socket ($"+client.EnvSocket+")")
	f.raw = fs.Bool("raw", false, "ciphertext is raw bytes on stdin/stdout instead of base64 text")
	f.timeout = fs.Duration("timeout", 10*time.Second, "call timeout")
	fs.Var(f.context, "context", "KEY=VALUE bound to the ciphertext (repeat for several)")
	if withKeyset {
		f.keyset = fs.String("keyset", "", "keyset to encrypt with (needed when the sidecar serves several)")
	}
	return f
}

func (f *clientFlags) dial() (*client.Client, error) {
	var opts []client.Option
	if f.keyset != nil && *f.keyset != "" {
		opts = append(opts, client.WithKeyset(*f.keyset))
	}
	return client.Dial(*f.socket, opts...)
}

func (f *clientFlags) readCiphertext(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, 8<<20))
	if err != nil {
		return nil, err
	}
	if *f.raw {
		return b, nil
	}
	ct, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b)))
	if err != nil {
		return nil, fmt.Errorf("stdin is not base64 (use --raw for binary ciphertext): %v", err)
	}
	return ct, nil
}

func (f *clientFlags) writeCiphertext(w io.Writer, ct []byte) error {
	if *f.raw {
		_, err := w.Write(ct)
		return err
	}
	_, err := fmt.Fprintln(w, base64.StdEncoding.EncodeToString(ct))
	return err
}

// call dials the sidecar and runs f under the --timeout.
func (f *clientFlags) call(ctx context.Context, fn func(context.Context, *client.Client) error) error {
	c, err := f.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, *f.timeout)
	defer cancel()
	return fn(ctx, c)
}

// cipherCommand parses a command's client flags and reads a ciphertext
// from stdin, for decrypt and rewrap.
func cipherCommand(name string, args []string, stdin io.Reader, stderr io.Writer) (*clientFlags, []byte, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	f := addClientFlags(fs, false)
	if err := parse(fs, args, stderr); err != nil {
		return nil, nil, err
	}
	ct, err := f.readCiphertext(stdin)
	return f, ct, err
}

func runEncrypt(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("encrypt", flag.ContinueOnError)
	f := addClientFlags(fs, true)
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	pt, err := io.ReadAll(io.LimitReader(stdin, 4<<20+1))
	if err != nil {
		return err
	}
	return f.call(ctx, func(ctx context.Context, c *client.Client) error {
		ct, err := c.Encrypt(ctx, pt, f.context)
		if err != nil {
			return err
		}
		return f.writeCiphertext(stdout, ct)
	})
}

func runDecrypt(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	f, ct, err := cipherCommand("decrypt", args, stdin, stderr)
	if err != nil {
		return err
	}
	return f.call(ctx, func(ctx context.Context, c *client.Client) error {
		pt, err := c.Decrypt(ctx, ct, f.context)
		if err != nil {
			return err
		}
		_, err = stdout.Write(pt)
		return err
	})
}

func runRewrap(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	f, ct, err := cipherCommand("rewrap", args, stdin, stderr)
	if err != nil {
		return err
	}
	return f.call(ctx, func(ctx context.Context, c *client.Client) error {
		out, _, err := c.Rewrap(ctx, ct, f.context)
		if err != nil {
			return err
		}
		return f.writeCiphertext(stdout, out)
	})
}

func runStatus(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	f := addClientFlags(fs, false)
	ready := fs.Bool("ready", false, "exit non-zero unless every keyset is loaded (for exec probes)")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	var st *v1.StatusResponse
	if err := f.call(ctx, func(ctx context.Context, c *client.Client) (err error) {
		st, err = c.Status(ctx)
		return err
	}); err != nil {
		return err
	}
	b, err := protojson.Marshal(st)
	if err != nil {
		return err
	}
	// protojson varies its whitespace on purpose; print a stable layout.
	var compact, pretty bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return err
	}
	if err := json.Indent(&pretty, compact.Bytes(), "", "  "); err != nil {
		return err
	}
	fmt.Fprintln(stdout, pretty.String())
	if *ready && !st.GetReady() {
		return fmt.Errorf("not ready")
	}
	return nil
}
