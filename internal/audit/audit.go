// Package audit owns keyshift's audit trail: an append-only JSON-lines file
// where every record carries the SHA-256 of the previous one, so removing,
// reordering or editing any record breaks the chain and Verify finds it.
// Records hold keyset names, versions, actors, results and reasons: never
// key material.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Record is one lifecycle step.
type Record struct {
	// Seq numbers records from 1 without gaps.
	Seq uint64 `json:"seq"`
	// Time is when the step finished.
	Time time.Time `json:"time"`
	// Actor is who did it: "controller/<pod>", "cli/<user>", ...
	Actor string `json:"actor"`
	// Action is the step: generate, verify, add-pending, distribute, promote,
	// retire, rewrap, ack-timeout, ...
	Action string `json:"action"`
	// Keyset is the keyset's name (namespace/name for Secrets).
	Keyset string `json:"keyset"`
	// Versions are the key versions concerned.
	Versions []uint32 `json:"versions,omitempty"`
	// Result is "ok", "failed" or "skipped".
	Result string `json:"result"`
	// Reason explains a failure or a skip.
	Reason string `json:"reason,omitempty"`
	// Prev is the Hash of the previous record ("" for the first).
	Prev string `json:"prev"`
	// Hash is SHA-256 over this record with Hash empty, hex.
	Hash string `json:"hash"`
}

// Errors.
var (
	// ErrBroken: the chain does not verify; the message names the first bad record.
	ErrBroken = errors.New("audit: chain broken")
)

func (r Record) digest() (string, error) {
	r.Hash = ""
	b, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Sink receives each record after it is written (for Kubernetes Events,
// metrics or logs). It must not block for long.
type Sink func(Record)

// Log appends records to a file. It is safe for concurrent use.
type Log struct {
	mu    sync.Mutex
	f     *os.File
	last  string
	seq   uint64
	sinks []Sink
	now   func() time.Time
}

// Open opens (or creates) the audit file at path, verifies the existing
// chain and continues it. A broken chain is refused: investigate first.
func Open(path string, sinks ...Sink) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	n, last, err := verify(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &Log{f: f, last: last, seq: n, sinks: sinks, now: time.Now}, nil
}

// Append completes r (Seq, Time if zero, Prev, Hash), writes it as one line
// with fsync, and passes it to the sinks.
func (l *Log) Append(r Record) (Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.Seq = l.seq + 1
	if r.Time.IsZero() {
		r.Time = l.now().UTC()
	}
	r.Prev = l.last
	h, err := r.digest()
	if err != nil {
		return r, fmt.Errorf("audit: %w", err)
	}
	r.Hash = h
	b, err := json.Marshal(r)
	if err != nil {
		return r, fmt.Errorf("audit: %w", err)
	}
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		return r, fmt.Errorf("audit: write: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return r, fmt.Errorf("audit: sync: %w", err)
	}
	l.seq, l.last = r.Seq, r.Hash
	for _, s := range l.sinks {
		s(r)
	}
	return r, nil
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// Verify checks a whole trail and returns the number of records.
func Verify(r io.Reader) (int, error) {
	n, _, err := verify(r)
	return int(n), err
}

func verify(r io.Reader) (uint64, string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var n uint64
	prev := ""
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec Record
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return n, prev, fmt.Errorf("%w: line %d is not a record: %v", ErrBroken, n+1, err)
		}
		switch h, err := rec.digest(); {
		case err != nil:
			return n, prev, err
		case rec.Seq != n+1:
			return n, prev, fmt.Errorf("%w: line %d has seq %d, want %d (a record was removed or reordered)", ErrBroken, n+1, rec.Seq, n+1)
		case rec.Prev != prev:
			return n, prev, fmt.Errorf("%w: record %d does not follow record %d (prev hash mismatch)", ErrBroken, rec.Seq, n)
		case rec.Hash != h:
			return n, prev, fmt.Errorf("%w: record %d was altered (hash mismatch)", ErrBroken, rec.Seq)
		}
		n, prev = rec.Seq, rec.Hash
	}
	if err := sc.Err(); err != nil {
		return n, prev, fmt.Errorf("audit: read: %w", err)
	}
	return n, prev, nil
}
