package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTrail(t *testing.T, n int) (string, []Record) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var got []Record
	l, err := Open(path, func(r Record) { got = append(got, r) })
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := l.Append(Record{Actor: "test", Action: "rotate", Keyset: "payments", Versions: []uint32{uint32(i + 1)}, Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	return path, got
}

func TestChainVerifiesAndContinues(t *testing.T) {
	path, sunk := writeTrail(t, 3)
	if len(sunk) != 3 || sunk[2].Prev != sunk[1].Hash || sunk[0].Prev != "" {
		t.Fatalf("sink records %+v", sunk)
	}
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Append(Record{Action: "promote", Keyset: "payments", Result: "ok"})
	if err != nil || r.Seq != 4 || r.Prev != sunk[2].Hash {
		t.Fatalf("continued record %+v, %v", r, err)
	}
	l.Close()
	b, _ := os.ReadFile(path)
	if n, err := Verify(bytes.NewReader(b)); err != nil || n != 4 {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

func TestTamperingIsFound(t *testing.T) {
	path, _ := writeTrail(t, 4)
	orig, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(orig)), "\n")
	cases := map[string]struct {
		lines []string
		msg   string
	}{
		"edited field":    {replace(lines, 1, strings.Replace(lines[1], `"result":"ok"`, `"result":"failed"`, 1)), "record 2 was altered"},
		"edited version":  {replace(lines, 2, strings.Replace(lines[2], `"versions":[3]`, `"versions":[9]`, 1)), "record 3 was altered"},
		"removed record":  {append(append([]string{}, lines[:1]...), lines[2:]...), "line 2 has seq 3"},
		"reordered":       {[]string{lines[0], lines[2], lines[1], lines[3]}, "line 2 has seq 3"},
		"rehashed forged": {replace(lines, 1, rehash(t, lines[1])), "record 3 does not follow record 2"},
		"garbage line":    {replace(lines, 3, "{not json"), "line 4 is not a record"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Verify(strings.NewReader(strings.Join(c.lines, "\n")))
			if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want ErrBroken containing %q", err, c.msg)
			}
			p := filepath.Join(t.TempDir(), "a.jsonl")
			os.WriteFile(p, []byte(strings.Join(c.lines, "\n")+"\n"), 0o600)
			if _, err := Open(p); !errors.Is(err, ErrBroken) {
				t.Fatalf("Open of a broken trail: %v", err)
			}
		})
	}
}

func replace(lines []string, i int, s string) []string {
	out := append([]string{}, lines...)
	out[i] = s
	return out
}

// rehash edits a record and recomputes its own hash, as a forger with
// write access would: the next record's prev no longer matches.
func rehash(t *testing.T, line string) string {
	var r Record
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatal(err)
	}
	r.Reason = "forged"
	h, _ := r.digest()
	r.Hash = h
	b, _ := json.Marshal(r)
	return string(b)
}
