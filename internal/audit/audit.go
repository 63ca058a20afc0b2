// Package audit owns keyshift's audit trail: for each keyset, a chain of
// records, each sealed with HMAC-SHA-256 under a key only the controller
// holds, over the record and the MAC of the one before it. The newest
// record's sequence number and MAC (the head) are stored beside the keyset
// in the same write as the step they record, so editing, reordering,
// removing or cutting off records is found, and a forger without the key
// cannot recompute a MAC.
//
// Records hold keyset names, versions, actors, results and reasons: never
// key material.
package audit

import (
	"bufio"
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Record is one lifecycle step of one keyset.
type Record struct {
	// Seq numbers the keyset's records from 1 without gaps, whichever
	// controller replica wrote them.
	Seq uint64 `json:"seq"`
	// Time is when the step finished.
	Time time.Time `json:"time"`
	// Actor is who did it: "controller/<pod>", "cli/<user>", ...
	Actor string `json:"actor"`
	// Action is the step: generate, verify, add-pending, distribute, promote,
	// retire, rewrap, ack-timeout, ...
	Action string `json:"action"`
	// Keyset is the keyset's name (namespace/name for Secrets); each keyset
	// has a chain of its own.
	Keyset string `json:"keyset"`
	// Versions are the key versions concerned (at most MaxVersions).
	Versions []uint32 `json:"versions,omitempty"`
	// Result is "ok", "failed" or "blocked".
	Result string `json:"result"`
	// Reason explains the step, a failure or a block (at most MaxReason bytes).
	Reason string `json:"reason,omitempty"`
	// KeyID names the audit key that sealed the record (not secret).
	KeyID string `json:"kid"`
	// Prev is the MAC of the keyset's previous record ("" for record 1).
	Prev string `json:"prev"`
	// MAC is HMAC-SHA-256 under the audit key over the record with MAC
	// empty (Prev included), hex.
	MAC string `json:"mac"`
}

// Bounds that keep a keyset's stored trail far below the 1 MiB limit of
// a Secret: KeepRecords records of at most about 1.5 KiB each.
const (
	// KeepRecords is how many of a keyset's newest records its store keeps;
	// the log pipeline and --audit-log files keep them all.
	KeepRecords = 256
	// MaxReason bounds a record's reason in bytes; the rest is cut.
	MaxReason = 512
	// MaxVersions bounds a record's version list; the reason says how many more.
	MaxVersions = 32
)

// Errors.
var (
	// ErrBroken: a trail does not verify; the message names the record.
	ErrBroken = errors.New("audit: chain broken")
	// ErrBadKey: a stored audit key does not parse, or is not the key it claims.
	ErrBadKey = errors.New("audit: bad audit key")
)

// Head names a chain's newest record: its sequence number and MAC. The
// zero Head is the head of an empty chain.
type Head struct {
	Seq uint64
	MAC string
}

// String is "SEQ:MAC", the form stored beside a keyset.
func (h Head) String() string {
	if h.Seq == 0 {
		return ""
	}
	return strconv.FormatUint(h.Seq, 10) + ":" + h.MAC
}

// IsZero reports whether h is the head of an empty chain.
func (h Head) IsZero() bool { return h.Seq == 0 }

// ParseHead parses "SEQ:MAC" ("" is the zero Head).
func ParseHead(s string) (Head, error) {
	if s == "" {
		return Head{}, nil
	}
	seq, mac, ok := strings.Cut(s, ":")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil || n == 0 || !isMAC(mac) {
		return Head{}, fmt.Errorf("%w: head %q: want SEQ:MAC (a record number and 64 hex digits)", ErrBroken, s)
	}
	return Head{Seq: n, MAC: mac}, nil
}

func isMAC(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// head is the record's position as a Head.
func (r Record) head() Head { return Head{Seq: r.Seq, MAC: r.MAC} }

// name says which record r is in errors: "record 3 of shop/payments".
func (r Record) name() string { return fmt.Sprintf("record %d of %s", r.Seq, r.Keyset) }

// Key is the MAC key that seals records, derived with HKDF from the audit
// key the controller keeps wrapped under its own KMS key. It prints and
// logs as REDACTED.
type Key struct {
	mac []byte
	id  string
}

// HKDF info strings: one key for MACs, one for the public key ID.
const (
	macInfo = "keyshift audit trail v1: record MAC key"
	idInfo  = "keyshift audit trail v1: key id"
)

// canonical prefixes the bytes a MAC covers, so they can never be taken
// for another keyshift MAC's input.
const canonical = "keyshift audit record v1\n"

// NewKey derives the MAC key from a 32-byte audit key.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) != 32 {
		return nil, fmt.Errorf("%w: %d bytes, want 32", ErrBadKey, len(secret))
	}
	mac, err := hkdf.Key(sha256.New, secret, nil, macInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	id, err := hkdf.Key(sha256.New, secret, nil, idInfo, 8)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return &Key{mac: mac, id: hex.EncodeToString(id)}, nil
}

// ID names the key in records and messages; it reveals nothing of it.
func (k *Key) ID() string { return k.id }

// String is REDACTED: the key never reaches a log or an error.
func (Key) String() string { return "REDACTED" }

// GoString is REDACTED too, for %#v.
func (Key) GoString() string { return "REDACTED" }

// LogValue is REDACTED.
func (Key) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// sum is the MAC of r as it would be with MAC empty.
func (k *Key) sum(r Record) (string, error) {
	r.MAC = ""
	b, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("audit: %w", err)
	}
	m := hmac.New(sha256.New, k.mac)
	m.Write([]byte(canonical))
	m.Write(b)
	return hex.EncodeToString(m.Sum(nil)), nil
}

// check verifies r's MAC.
func (k *Key) check(r Record) error {
	if r.KeyID != k.id {
		return fmt.Errorf("%w: %s was sealed under audit key %q, not under this key (%s): a wrong audit key, or the record was altered", ErrBroken, r.name(), r.KeyID, k.id)
	}
	want, err := k.sum(r)
	if err != nil {
		return err
	}
	if !hmac.Equal([]byte(want), []byte(r.MAC)) {
		return fmt.Errorf("%w: %s was altered (MAC mismatch)", ErrBroken, r.name())
	}
	return nil
}

// Seal completes r as the record after head in its keyset's chain: Seq,
// Prev, KeyID, Time (now, when zero) and MAC, with every text field made
// valid UTF-8 and the reason and versions bounded, so the record reads
// back exactly as it was sealed.
func (k *Key) Seal(head Head, r Record) (Record, error) {
	r.Seq, r.Prev, r.KeyID, r.MAC = head.Seq+1, head.MAC, k.id, ""
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	r.Actor, r.Action, r.Keyset, r.Result = clean(r.Actor), clean(r.Action), clean(r.Keyset), clean(r.Result)
	reason := clean(r.Reason)
	if n := len(r.Versions); n > MaxVersions {
		r.Versions = append([]uint32(nil), r.Versions[:MaxVersions]...)
		reason += fmt.Sprintf(" (%d versions in all; the first %d listed)", n, MaxVersions)
	}
	if len(reason) > MaxReason {
		cut := MaxReason - len("…")
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut] + "…"
	}
	r.Reason = reason
	mac, err := k.sum(r)
	if err != nil {
		return r, err
	}
	r.MAC = mac
	return r, nil
}

func clean(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// Trail is a keyset's stored chain: its newest records (at most
// KeepRecords, oldest first) and the head, the newest record's sequence
// number and MAC, which the store writes in the same compare-and-swap as
// the step a record describes.
type Trail struct {
	Records []Record
	Head    Head
}

// ParseTrail reads a stored trail: records as JSON lines, and the head. It
// returns what it could read along with the first problem, so a store can
// go on appending to a damaged trail (the damage stays visible to Verify)
// rather than stop rotating.
func ParseTrail(records []byte, head string) (Trail, error) {
	var t Trail
	var errs []error
	h, err := ParseHead(head)
	if err != nil {
		errs = append(errs, err)
	}
	t.Head = h
	err = eachRecord(bytes.NewReader(records), func(n int, rec Record, err error) bool {
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: line %d of the trail: %v", ErrBroken, n, err))
		} else {
			t.Records = append(t.Records, rec)
		}
		return true
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("%w: %v", ErrBroken, err))
	}
	if len(errs) > 0 {
		return t, errs[0]
	}
	return t, nil
}

// eachRecord reads JSON-lines records from r, skipping blank lines, and
// calls f with each one's line number and the record or why it does not
// parse, until f returns false. It returns the reader's error, if any.
func eachRecord(r io.Reader, f func(line int, rec Record, err error) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		rec, err := parseRecord(line)
		if !f(n, rec, err) {
			return nil
		}
	}
	return sc.Err()
}

// parseRecord reads one JSON line strictly.
func parseRecord(line []byte) (Record, error) {
	var rec Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		if bytes.Contains(line, []byte(`"hash":`)) {
			return rec, errors.New("a record of the old unkeyed trail (keyshift before keyed records): keep that file for the record and start a new one")
		}
		return rec, fmt.Errorf("not a record: %v", err)
	}
	if rec.Seq == 0 || !isMAC(rec.MAC) {
		return rec, errors.New("not a sealed record (no seq or MAC)")
	}
	return rec, nil
}

// tip is where the next record goes: after the head, or after the last
// record when the head is missing or unreadable.
func (t *Trail) tip() Head {
	if !t.Head.IsZero() {
		return t.Head
	}
	if n := len(t.Records); n > 0 {
		return t.Records[n-1].head()
	}
	return Head{}
}

// Append seals r after the trail's head, adds it, moves the head to it and
// drops the oldest records beyond KeepRecords. It returns the sealed record.
func (t *Trail) Append(k *Key, r Record) (Record, error) {
	rec, err := k.Seal(t.tip(), r)
	if err != nil {
		return rec, err
	}
	t.Records = append(t.Records, rec)
	if n := len(t.Records); n > KeepRecords {
		t.Records = append([]Record(nil), t.Records[n-KeepRecords:]...)
	}
	t.Head = rec.head()
	return rec, nil
}

// Last is the newest record (false for an empty trail).
func (t Trail) Last() (Record, bool) {
	if len(t.Records) == 0 {
		return Record{}, false
	}
	return t.Records[len(t.Records)-1], true
}

// MarshalRecords is the records as JSON lines, the stored form.
func (t Trail) MarshalRecords() ([]byte, error) {
	var b bytes.Buffer
	for _, r := range t.Records {
		line, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// VerifyTrail checks a keyset's stored trail: every record of keyset and
// sealed by k, in order, consecutive, each linked to the one before by
// its MAC, the last one the record the head names, and as many as the
// store keeps (min(head, KeepRecords)). The error names the first bad
// record and what is wrong with it: altered, reordered, removed, or the
// tail cut off.
func (k *Key) VerifyTrail(keyset string, t Trail) error {
	recs := t.Records
	for i, r := range recs {
		if r.Keyset != keyset {
			return fmt.Errorf("%w: line %d holds %s, not a record of %s", ErrBroken, i+1, r.name(), keyset)
		}
		if err := k.check(r); err != nil {
			return err
		}
		if i > 0 && r.Seq <= recs[i-1].Seq {
			return fmt.Errorf("%w: %s comes after record %d: records were reordered or repeated", ErrBroken, r.name(), recs[i-1].Seq)
		}
	}
	for i := range recs {
		if err := follows(recs, i); err != nil {
			return err
		}
	}
	last, ok := t.Last()
	switch h := t.Head; {
	case !ok && h.IsZero():
		return nil
	case !ok:
		return fmt.Errorf("%w: %s: the trail was truncated: the head names record %d but no record is left", ErrBroken, keyset, h.Seq)
	case h.IsZero():
		return fmt.Errorf("%w: %s: the head is missing (the trail ends at record %d)", ErrBroken, keyset, last.Seq)
	case h.Seq > last.Seq:
		return fmt.Errorf("%w: %s: the trail was truncated: the head names record %d, the last record present is %d (records %d..%d were cut off)", ErrBroken, keyset, h.Seq, last.Seq, last.Seq+1, h.Seq)
	case h.Seq < last.Seq:
		return fmt.Errorf("%w: %s lies past the head, record %d: the head was rolled back or records were added", ErrBroken, last.name(), h.Seq)
	case h.MAC != last.MAC:
		return fmt.Errorf("%w: %s is not the record the head names (MAC differs): it was replaced", ErrBroken, last.name())
	}
	want := min(t.Head.Seq, KeepRecords)
	if first := recs[0].Seq; first > t.Head.Seq-want+1 {
		return fmt.Errorf("%w: %s: records %d..%d were removed from the start of the trail (the store keeps the last %d)", ErrBroken, keyset, t.Head.Seq-want+1, first-1, KeepRecords)
	}
	return nil
}

// follows checks recs[i] against the record before it: the next number,
// linked by MAC; record 1 has no predecessor.
func follows(recs []Record, i int) error {
	r := recs[i]
	if i == 0 {
		if r.Seq == 1 && r.Prev != "" {
			return fmt.Errorf("%w: %s claims a predecessor", ErrBroken, r.name())
		}
		return nil
	}
	p := recs[i-1]
	switch {
	case r.Seq > p.Seq+1:
		return fmt.Errorf("%w: %s: records %d..%d are missing between record %d and record %d (removed)", ErrBroken, r.Keyset, p.Seq+1, r.Seq-1, p.Seq, r.Seq)
	case r.Prev != p.MAC:
		return fmt.Errorf("%w: %s does not follow record %d (previous MAC mismatch)", ErrBroken, r.name(), p.Seq)
	}
	return nil
}

// VerifyStored reads a stored trail strictly (a line that is not a sealed
// record, or a head that does not parse, is an error) and verifies it as
// VerifyTrail does.
func (k *Key) VerifyStored(keyset string, records []byte, head string) (Trail, error) {
	t, err := ParseTrail(records, head)
	if err != nil {
		return t, fmt.Errorf("%s: %w", keyset, err)
	}
	return t, k.VerifyTrail(keyset, t)
}
