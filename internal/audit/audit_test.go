package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const ks = "shop/payments"

func testKey(t *testing.T, seed byte) *Key {
	t.Helper()
	k, err := NewKey(bytes.Repeat([]byte{seed}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// trailOf is a keyset's trail of n records sealed by k.
func trailOf(t *testing.T, k *Key, n int) Trail {
	t.Helper()
	var tr Trail
	for i := range n {
		if _, err := tr.Append(k, Record{Actor: "controller/a", Action: "add-pending", Keyset: ks, Versions: []uint32{uint32(i + 2)}, Result: "ok", Reason: "due",
			Time: time.Date(2026, 1, 1, 0, i, 0, 0, time.UTC)}); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

func lines(t *testing.T, tr Trail) []string {
	t.Helper()
	b, err := tr.MarshalRecords()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func join(ls []string) []byte {
	if len(ls) == 0 {
		return nil
	}
	return []byte(strings.Join(ls, "\n") + "\n")
}

func TestTrailChainsAndVerifies(t *testing.T) {
	k := testKey(t, 1)
	tr := trailOf(t, k, 4)
	if tr.Head.Seq != 4 || tr.Records[0].Prev != "" || tr.Records[3].Prev != tr.Records[2].MAC || tr.Head.MAC != tr.Records[3].MAC {
		t.Fatalf("trail %+v", tr)
	}
	b, _ := tr.MarshalRecords()
	got, err := k.VerifyStored(ks, b, tr.Head.String())
	if err != nil {
		t.Fatal(err)
	}
	if got.Head != tr.Head || len(got.Records) != 4 {
		t.Fatalf("read back %+v", got)
	}
	for i := range tr.Records {
		if !tr.Records[i].Time.Equal(got.Records[i].Time) || tr.Records[i].MAC != got.Records[i].MAC {
			t.Fatalf("record %d read back as %+v, want %+v", i+1, got.Records[i], tr.Records[i])
		}
	}
	if _, err := k.VerifyStored(ks, nil, ""); err != nil {
		t.Fatalf("an empty trail: %v", err)
	}
}

// unkeyedRehash edits a record's result and recomputes its MAC as an
// unkeyed chain would (SHA-256 of the record with the digest empty): what
// anyone with write access could do before records were keyed.
func unkeyedRehash(t *testing.T, line string) string {
	t.Helper()
	edited := strings.Replace(line, `"result":"ok"`, `"result":"failed"`, 1)
	re := regexp.MustCompile(`"mac":"[0-9a-f]*"`)
	blank := re.ReplaceAllString(edited, `"mac":""`)
	sum := sha256.Sum256([]byte(blank))
	return re.ReplaceAllString(edited, `"mac":"`+hex.EncodeToString(sum[:])+`"`)
}

// resealed edits a record's result and seals it again under k, after the
// record before it: a forger holding some other key.
func resealed(t *testing.T, k *Key, line string) (string, Head) {
	t.Helper()
	var r Record
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatal(err)
	}
	r.Result = "failed"
	r, err := k.Seal(Head{Seq: r.Seq - 1, MAC: r.Prev}, r)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(r)
	return string(b), r.head()
}

// Every way of tampering with a stored trail is found, and the error
// names the record: edits (the last record too, its digest recomputed,
// the old weakness), reordering, removal, and the tail cut off while the
// head anchored beside the keyset still names the last record.
func TestStoredTrailTamperingIsFound(t *testing.T) {
	k := testKey(t, 1)
	tr := trailOf(t, k, 5)
	ls := lines(t, tr)
	head := tr.Head.String()
	other := trailOf(t, k, 2)
	for i := range other.Records {
		other.Records[i].Keyset = "bank/payments"
	}
	forgedLast, forgedHead := resealed(t, testKey(t, 2), ls[4])
	cases := []struct {
		name    string
		records []string
		head    string
		msg     string
	}{
		{"last record edited, digest recomputed unkeyed", replace(ls, 4, unkeyedRehash(t, ls[4])), head, "record 5 of shop/payments was altered (MAC mismatch)"},
		{"last record edited, digest recomputed unkeyed, head moved to it", replace(ls, 4, unkeyedRehash(t, ls[4])), "5:" + regexp.MustCompile(`"mac":"([0-9a-f]*)"`).FindStringSubmatch(unkeyedRehash(t, ls[4]))[1], "record 5 of shop/payments was altered"},
		{"last record resealed under another key, head moved to it", replace(ls, 4, forgedLast), forgedHead.String(), "record 5 of shop/payments was sealed under audit key"},
		{"middle record edited", replace(ls, 2, strings.Replace(ls[2], `"versions":[4]`, `"versions":[9]`, 1)), head, "record 3 of shop/payments was altered"},
		{"reordered", []string{ls[0], ls[2], ls[1], ls[3], ls[4]}, head, "record 2 of shop/payments comes after record 3: records were reordered"},
		{"record removed", append(append([]string{}, ls[:2]...), ls[3:]...), head, "records 3..3 are missing between record 2 and record 4 (removed)"},
		{"first record removed", ls[1:], head, "records 1..1 were removed from the start"},
		{"tail cut off", ls[:4], head, "the trail was truncated: the head names record 5, the last record present is 4"},
		{"two records cut off", ls[:3], head, "records 4..5 were cut off"},
		{"every record cut off", nil, head, "the head names record 5 but no record is left"},
		{"head removed", ls, "", "the head is missing"},
		{"head rolled back", ls, tr.Records[3].head().String(), "record 5 of shop/payments lies past the head, record 4"},
		{"head names a record that is not there", ls, "5:" + strings.Repeat("0", 64), "record 5 of shop/payments is not the record the head names"},
		{"another keyset's record spliced in", replace(ls, 4, lines(t, other)[1]), head, "line 5 holds record 2 of bank/payments, not a record of shop/payments"},
		{"garbage line", replace(ls, 3, "{not json"), head, "line 4 of the trail: not a record"},
		{"head garbled", ls, "five", `head "five": want SEQ:MAC`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := k.VerifyStored(ks, join(c.records), c.head)
			if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want ErrBroken containing %q", err, c.msg)
			}
		})
	}
	if _, err := testKey(t, 2).VerifyStored(ks, join(ls), head); err == nil || !strings.Contains(err.Error(), "a wrong audit key") {
		t.Fatalf("verified under another key: %v", err)
	}
}

func replace(ls []string, i int, s string) []string {
	out := append([]string{}, ls...)
	out[i] = s
	return out
}

// A store keeps the newest KeepRecords records, and even records with the
// longest reasons and version lists stay far below a Secret's 1 MiB.
func TestTrailBoundedAndSmall(t *testing.T) {
	k := testKey(t, 1)
	var tr Trail
	versions := make([]uint32, 1000)
	for i := range versions {
		versions[i] = uint32(16_000_000 + i)
	}
	for range KeepRecords + 10 {
		if _, err := tr.Append(k, Record{Actor: "controller/" + strings.Repeat("a", 63), Action: "migrate-kms", Keyset: strings.Repeat("n", 63) + "/" + strings.Repeat("k", 63),
			Versions: versions, Result: "failed", Reason: strings.Repeat("é", 2*MaxReason)}); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := tr.MarshalRecords()
	if len(tr.Records) != KeepRecords || tr.Records[0].Seq != 11 || tr.Head.Seq != KeepRecords+10 {
		t.Fatalf("kept %d records from %d, head %d", len(tr.Records), tr.Records[0].Seq, tr.Head.Seq)
	}
	if len(b) > 512<<10 {
		t.Fatalf("the worst-case trail is %d bytes, want at most 512 KiB", len(b))
	}
	if _, err := k.VerifyStored(tr.Records[0].Keyset, b, tr.Head.String()); err != nil {
		t.Fatal(err)
	}
	r := tr.Records[0]
	if len(r.Versions) != MaxVersions || len(r.Reason) > MaxReason || !strings.HasSuffix(r.Reason, "…") {
		t.Fatalf("record not bounded: %d versions, reason %d bytes %q", len(r.Versions), len(r.Reason), r.Reason[len(r.Reason)-20:])
	}
}

// A record reads back exactly as it was sealed, whatever its text holds.
func TestSealedRecordRoundTrips(t *testing.T) {
	k := testKey(t, 1)
	var tr Trail
	if _, err := tr.Append(k, Record{Actor: "cli/\xff\xfe", Action: "a<b>&c", Keyset: ks, Result: "ok", Reason: "bad \xc3 utf-8 and \u2028 and \"quotes\"",
		Time: time.Date(2026, 1, 1, 1, 0, 0, 123456789, time.FixedZone("x", 3600))}); err != nil {
		t.Fatal(err)
	}
	b, _ := tr.MarshalRecords()
	if _, err := k.VerifyStored(ks, b, tr.Head.String()); err != nil {
		t.Fatal(err)
	}
}

// The audit key prints and logs as REDACTED, in every format, and its
// bytes reach no log.
func TestKeyRedacted(t *testing.T) {
	k := testKey(t, 7)
	for _, v := range []any{k, *k} {
		if got := fmt.Sprintf("%v %+v %s %#v", v, v, v, v); got != "REDACTED REDACTED REDACTED REDACTED" {
			t.Errorf("%T prints as %q", v, got)
		}
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "key", v)
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "key", v)
		if strings.Count(buf.String(), "REDACTED") != 2 {
			t.Errorf("%T logs as %s", v, buf.String())
		}
		for _, secret := range [][]byte{k.mac, bytes.Repeat([]byte{7}, 32)} {
			for _, enc := range []string{string(secret), hex.EncodeToString(secret), base64.StdEncoding.EncodeToString(secret)} {
				if strings.Contains(buf.String(), enc) {
					t.Errorf("key bytes logged: %s", buf.String())
				}
			}
		}
	}
	if fmt.Sprint(storedKey{Plain: []byte("secret")}) != "REDACTED" {
		t.Error("a stored key prints its content")
	}
}

// The --audit-log file: records of a keyset stay consecutive across
// leader changes (the records the other replica stored are copied from
// the store's trail), a file begun after a restart starts mid-chain, and
// the whole file verifies under the key.
func TestLogContinuesAcrossReplicas(t *testing.T) {
	k := testKey(t, 1)
	dir := t.TempDir()
	a, err := OpenKeyed(filepath.Join(dir, "a.jsonl"), k)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenKeyed(filepath.Join(dir, "b.jsonl"), k)
	if err != nil {
		t.Fatal(err)
	}
	var tr Trail
	step := func(l *Log) {
		if _, err := tr.Append(k, Record{Actor: "x", Action: "promote", Keyset: ks, Result: "ok"}); err != nil {
			t.Fatal(err)
		}
		if err := l.Write(tr); err != nil {
			t.Fatal(err)
		}
	}
	step(a)
	step(a)
	step(b) // b leads
	step(b)
	step(a) // a leads again: records 3 and 4 are copied in first
	a.Close()
	b.Close()
	check := func(name string, first, last uint64, heads map[string]Head) {
		t.Helper()
		f, _ := os.ReadFile(filepath.Join(dir, name))
		s, err := VerifyLog(bytes.NewReader(f), k, heads)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, f)
		}
		if s.First[ks].Seq != first || s.Last[ks].Seq != last {
			t.Fatalf("%s holds records %d..%d, want %d..%d", name, s.First[ks].Seq, s.Last[ks].Seq, first, last)
		}
	}
	check("a.jsonl", 1, 5, map[string]Head{ks: tr.Head})
	check("b.jsonl", 3, 4, nil)

	// a restarts on a new emptyDir: its new file starts at record 6.
	a, err = OpenKeyed(filepath.Join(dir, "a2.jsonl"), k)
	if err != nil {
		t.Fatal(err)
	}
	step(a)
	a.Close()
	check("a2.jsonl", 6, 6, map[string]Head{ks: tr.Head})
}

// The same tampering is found in a JSON-lines file, the tail cut off
// only against the anchored head.
func TestLogTamperingIsFound(t *testing.T) {
	k := testKey(t, 1)
	tr := trailOf(t, k, 5)
	ls := lines(t, tr)
	heads := map[string]Head{ks: tr.Head}
	cases := []struct {
		name  string
		lines []string
		heads map[string]Head
		msg   string
	}{
		{"last record edited, digest recomputed unkeyed", replace(ls, 4, unkeyedRehash(t, ls[4])), nil, "line 5: audit: chain broken: record 5 of shop/payments was altered"},
		{"reordered", []string{ls[0], ls[2], ls[1], ls[3], ls[4]}, nil, "line 3: record 2 of shop/payments comes after record 3"},
		{"record removed", append(append([]string{}, ls[:2]...), ls[3:]...), nil, "line 3: shop/payments: records 3..3 are missing"},
		{"tail cut off", ls[:4], heads, "the head names record 5, the file ends at record 4"},
		{"head rolled back", ls, map[string]Head{ks: tr.Records[2].head()}, "record 5 of shop/payments lies past the head, record 3"},
		{"no record of a keyset with a head", ls, map[string]Head{"bank/x": tr.Head}, "bank/x: the trail was truncated"},
		{"old unkeyed trail", []string{`{"seq":1,"time":"2026-01-01T00:00:00Z","actor":"a","action":"b","keyset":"c","result":"ok","prev":"","hash":"00"}`}, nil, "old unkeyed trail"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := VerifyLog(bytes.NewReader(join(c.lines)), k, c.heads)
			if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want ErrBroken containing %q", err, c.msg)
			}
			p := filepath.Join(t.TempDir(), "a.jsonl")
			os.WriteFile(p, join(c.lines), 0o600)
			if c.heads == nil {
				if _, err := OpenKeyed(p, k); !errors.Is(err, ErrBroken) {
					t.Fatalf("OpenKeyed of a broken file: %v", err)
				}
			}
		})
	}
	// Without the key the structure is still checked, not the MACs.
	if n, err := Verify(bytes.NewReader(join(ls))); err != nil || n != 5 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
	if _, err := Verify(bytes.NewReader(join([]string{ls[0], ls[2]}))); !errors.Is(err, ErrBroken) {
		t.Fatalf("Verify of a trail with a gap: %v", err)
	}
}
