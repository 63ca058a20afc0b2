package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sync"
)

// Sink receives each record after it is written (for Kubernetes Events,
// metrics or logs). It must not block for long.
type Sink func(Record)

// Log is a local copy of the trail as JSON lines (the controller's
// --audit-log): the records this replica stored, each keyset's records in
// order and, across leader changes, without gaps where the store still
// holds the other replica's records. The store's trail and its head are
// the reference; the log pipeline keeps every record for good. It is safe
// for concurrent use.
type Log struct {
	mu    sync.Mutex
	f     *os.File
	last  map[string]Head // each keyset's last record in the file
	sinks []Sink
}

// Open opens (or creates) the file at path, checks the records already in
// it (order and links; not MACs, for want of the key) and continues it. A
// file that does not verify is refused: investigate first.
func Open(path string, sinks ...Sink) (*Log, error) { return open(path, nil, sinks) }

// OpenKeyed is Open that also checks every record's MAC under k.
func OpenKeyed(path string, k *Key, sinks ...Sink) (*Log, error) { return open(path, k, sinks) }

func open(path string, k *Key, sinks []Sink) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	sum, err := VerifyLog(f, k, nil)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w (move the file aside to keep it as evidence; a new one is then started)", path, err)
	}
	return &Log{f: f, last: sum.Last, sinks: sinks}, nil
}

// Write appends t's newest record and, when the file's last record of that
// keyset is older than the one before it (another replica led meanwhile),
// first the records of t in between, so each keyset's records in the file
// stay consecutive. Each line is written with fsync and passed to the sinks.
func (l *Log) Write(t Trail) error {
	newest, ok := t.Last()
	if !ok {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Record
	if last, ok := l.last[newest.Keyset]; ok && newest.Seq > last.Seq+1 {
		out = between(t.Records, last)
	}
	out = append(out, newest)
	var b bytes.Buffer
	for _, r := range out {
		line, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	if _, err := l.f.Write(b.Bytes()); err != nil {
		return fmt.Errorf("audit: write: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: sync: %w", err)
	}
	l.last[newest.Keyset] = newest.head()
	for _, r := range out {
		for _, s := range l.sinks {
			s(r)
		}
	}
	return nil
}

// between is the records of recs after last and before the newest, when
// recs links them without a gap; nil otherwise (the file then shows the
// gap, and the store or the log pipeline holds the records).
func between(recs []Record, last Head) []Record {
	for i, r := range recs {
		if r.Seq != last.Seq+1 || r.Prev != last.MAC {
			continue
		}
		for j := i + 1; j < len(recs); j++ {
			if recs[j].Seq != recs[j-1].Seq+1 || recs[j].Prev != recs[j-1].MAC {
				return nil
			}
		}
		return append([]Record(nil), recs[i:len(recs)-1]...)
	}
	return nil
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// Verify checks the structure of a JSON-lines trail without the key (each
// keyset's records in order, consecutive and linked) and returns the
// number of records. VerifyLog with the key checks MACs too.
func Verify(r io.Reader) (int, error) {
	s, err := VerifyLog(r, nil, nil)
	return s.Records, err
}

// LogSummary is what VerifyLog read: the number of records, and each
// keyset's first and last record.
type LogSummary struct {
	Records int
	First   map[string]Head
	Last    map[string]Head
}

// Keysets are the keysets with records, sorted.
func (s LogSummary) Keysets() []string { return slices.Sorted(maps.Keys(s.Last)) }

// VerifyLog checks a JSON-lines file of records: a controller's
// --audit-log, or records exported from its logs (the "audit_record"
// field of each "keyset lifecycle step" line), in the order written. Each
// keyset's records must be in order, consecutive and linked by MAC; its
// first record in the file may be any (a file begun after a restart),
// but record 1 has no predecessor. With k, every MAC is checked; with k
// nil only the structure. heads, when given, are anchored heads by
// keyset: that keyset's last record in the file must be the one its head
// names, or the file was truncated (or the head rolled back).
func VerifyLog(r io.Reader, k *Key, heads map[string]Head) (LogSummary, error) {
	s := LogSummary{First: map[string]Head{}, Last: map[string]Head{}}
	type entry struct {
		line int
		rec  Record
	}
	chains := map[string][]entry{}
	var bad error
	err := eachRecord(r, func(n int, rec Record, err error) bool {
		if err != nil {
			bad = fmt.Errorf("%w: line %d: %v", ErrBroken, n, err)
			return false
		}
		if k != nil {
			if err := k.check(rec); err != nil {
				bad = fmt.Errorf("line %d: %w", n, err)
				return false
			}
		}
		chains[rec.Keyset] = append(chains[rec.Keyset], entry{n, rec})
		s.Records++
		return true
	})
	if bad != nil {
		return s, bad
	}
	if err != nil {
		return s, fmt.Errorf("audit: read: %w", err)
	}
	// Each keyset's chain: order first (a swap reads as reordered, not as
	// a gap), then gaps and links; the error on the earliest line wins.
	var first error
	firstLine := 0
	fail := func(line int, err error) {
		if first == nil || line < firstLine {
			first, firstLine = err, line
		}
	}
	for ks, es := range chains {
		s.First[ks], s.Last[ks] = es[0].rec.head(), es[len(es)-1].rec.head()
		ordered := true
		for i := 1; i < len(es) && ordered; i++ {
			if r, p := es[i].rec, es[i-1].rec; r.Seq <= p.Seq {
				fail(es[i].line, fmt.Errorf("%w: line %d: %s comes after record %d: records were reordered or repeated", ErrBroken, es[i].line, r.name(), p.Seq))
				ordered = false
			}
		}
		if !ordered {
			continue
		}
		if r := es[0].rec; r.Seq == 1 && r.Prev != "" {
			fail(es[0].line, fmt.Errorf("%w: line %d: %s claims a predecessor", ErrBroken, es[0].line, r.name()))
			continue
		}
		for i := 1; i < len(es); i++ {
			r, p, n := es[i].rec, es[i-1].rec, es[i].line
			if r.Seq > p.Seq+1 {
				fail(n, fmt.Errorf("%w: line %d: %s: records %d..%d are missing between record %d and record %d (removed)", ErrBroken, n, ks, p.Seq+1, r.Seq-1, p.Seq, r.Seq))
				break
			}
			if r.Prev != p.MAC {
				fail(n, fmt.Errorf("%w: line %d: %s does not follow record %d (previous MAC mismatch)", ErrBroken, n, r.name(), p.Seq))
				break
			}
		}
	}
	if first != nil {
		return s, first
	}
	for _, ks := range slices.Sorted(maps.Keys(heads)) {
		h, last := heads[ks], s.Last[ks]
		switch {
		case h.IsZero() && last.IsZero():
		case last.IsZero():
			return s, fmt.Errorf("%w: %s: the trail was truncated: the head names record %d, the file holds no record of it", ErrBroken, ks, h.Seq)
		case h.Seq > last.Seq:
			return s, fmt.Errorf("%w: %s: the trail was truncated: the head names record %d, the file ends at record %d (records %d..%d were cut off, or written by another replica: verify an export of the log pipeline)", ErrBroken, ks, h.Seq, last.Seq, last.Seq+1, h.Seq)
		case h.Seq < last.Seq:
			return s, fmt.Errorf("%w: record %d of %s lies past the head, record %d: the head was rolled back or records were added", ErrBroken, last.Seq, ks, h.Seq)
		case h.MAC != last.MAC:
			return s, fmt.Errorf("%w: record %d of %s is not the record the head names (MAC differs): it was replaced", ErrBroken, last.Seq, ks)
		}
	}
	return s, nil
}
