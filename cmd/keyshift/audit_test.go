package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// auditRig is a controller on a keyset directory with a 1 s rotation
// policy and no xDS, so it adds and promotes a version every second.
type auditRig struct {
	dir, ksDir, trail string
}

func newAuditRig(t *testing.T) *auditRig {
	t.Helper()
	dir := t.TempDir()
	r := &auditRig{dir: dir, ksDir: filepath.Join(dir, "keysets"), trail: filepath.Join(dir, "state", "audit.jsonl")}
	for _, d := range []string{r.ksDir, filepath.Dir(r.trail)} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	kek := "local://" + filepath.Join(dir, "kek.json")
	if code, out, errs := keyshift(t, "", "keyset", "create", "--file", filepath.Join(r.ksDir, "orders.json"), "--name", "orders", "--kms", kek,
		"--rotation-period", "1s", "--retention", "1h"); code != 0 {
		t.Fatalf("create: %d %q %q", code, out, errs)
	}
	return r
}

// runUntil runs the controller until its --audit-log holds at least n
// records, and returns what it logged.
func (r *auditRig) runUntil(t *testing.T, n int, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, append([]string{"controller", "--keyset-dir", r.ksDir, "--xds-addr", "", "--audit-log", r.trail,
			"--interval", "50ms", "--min-pending-age", "0", "--metrics-addr", "", "--identity", "test", "--log-level", "debug"}, flags...), nil, &bytes.Buffer{}, &logs)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for len(r.lines(t)) < n {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("the controller wrote %d audit records in 20 s, want %d:\n%s", len(r.lines(t)), n, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("controller exited %d:\n%s", code, logs.String())
	}
	return logs.String()
}

// lines are the records in the --audit-log file.
func (r *auditRig) lines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(r.trail)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

func (r *auditRig) write(t *testing.T, lines []string) {
	t.Helper()
	if err := os.WriteFile(r.trail, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

var digestField = regexp.MustCompile(`"(hash|mac)":"[0-9a-f]*"`)

// forge edits a record and recomputes its digest the way an unkeyed
// chain computes it (SHA-256 of the record with the digest empty), as
// anyone with write access to the trail can.
func forge(t *testing.T, line string) string {
	t.Helper()
	edited := strings.Replace(line, `"result":"ok"`, `"result":"failed"`, 1)
	if edited == line {
		t.Fatalf("no result to edit in %s", line)
	}
	loc := digestField.FindStringSubmatchIndex(edited)
	if loc == nil {
		t.Fatalf("no digest in %s", line)
	}
	field := edited[loc[2]:loc[3]]
	blank := edited[:loc[0]] + `"` + field + `":""` + edited[loc[1]:]
	sum := sha256.Sum256([]byte(blank))
	return edited[:loc[0]] + `"` + field + `":"` + hex.EncodeToString(sum[:]) + `"` + edited[loc[1]:]
}

// The review's finding: the last record edited with its digest
// recomputed passed `keyshift audit verify`. Records are keyed now.
func TestAuditVerifyFindsForgedLastRecord(t *testing.T) {
	r := newAuditRig(t)
	r.runUntil(t, 3)
	if code, out, errs := keyshift(t, "", "audit", "verify", "--file", r.trail); code != 0 || !strings.Contains(out, "chain intact") {
		t.Fatalf("untouched trail: %d %q %q", code, out, errs)
	}
	lines := r.lines(t)
	lines[len(lines)-1] = forge(t, lines[len(lines)-1])
	r.write(t, lines)
	if code, out, errs := keyshift(t, "", "audit", "verify", "--file", r.trail); code != 1 || !strings.Contains(errs, "altered") {
		t.Fatalf("last record forged with its digest recomputed: exit %d, stdout %q, stderr %q; want exit 1 naming the altered record", code, out, errs)
	}
}

// The review's finding: cutting the tail of the trail passed. The head
// anchored beside the keyset names the last record.
func TestAuditVerifyFindsTruncatedTail(t *testing.T) {
	r := newAuditRig(t)
	r.runUntil(t, 3)
	lines := r.lines(t)
	r.write(t, lines[:len(lines)-1])
	code, out, errs := keyshift(t, "", "audit", "verify", "--file", r.trail, "--keyset-dir", r.ksDir)
	if code != 1 || !strings.Contains(errs, "truncated") {
		t.Fatalf("trail without its last record: exit %d, stdout %q, stderr %q; want exit 1 saying it was truncated", code, out, errs)
	}
}

// The trail outlives the controller's disk: restarted with an empty
// --audit-log file (a new emptyDir), now with --audit-kms, the controller
// continues the keyset's chain from the head stored beside the keyset, and
// the stored trail verifies from record 1. The key is the same one, now
// wrapped; a verifier naming another KMS key refuses it.
func TestAuditTrailSurvivesRestart(t *testing.T) {
	r := newAuditRig(t)
	r.runUntil(t, 3)
	first := len(r.lines(t))
	if err := os.Remove(r.trail); err != nil {
		t.Fatal(err)
	}
	auditKMS := "local://" + filepath.Join(r.dir, "audit-kek.json")
	logs := r.runUntil(t, 2, "--audit-kms", auditKMS)
	if !strings.Contains(logs, "audit key re-wrapped under --audit-kms") {
		t.Fatalf("no re-wrap logged:\n%s", logs)
	}
	keyFile := filepath.Join(filepath.Dir(r.trail), "audit.key")
	code, out, errs := keyshift(t, "", "audit", "verify", "--keyset-dir", r.ksDir, "--file", r.trail, "--audit-key-file", keyFile, "--audit-kms", auditKMS)
	if code != 0 || !strings.Contains(out, "keyset orders, records 1..") || !strings.Contains(out, "each keyset's last record is the head") {
		t.Fatalf("verify after the restart: %d %q %q", code, out, errs)
	}
	var head uint64
	fmt.Sscanf(out[strings.Index(out, "(head ")+len("(head "):], "%d", &head)
	if int(head) < first+2 {
		t.Fatalf("the stored chain ends at record %d; the first run wrote %d records, the second at least 2:\n%s", head, first, out)
	}
	if b, _ := os.ReadFile(keyFile); strings.Contains(string(b), `"key"`) {
		t.Fatalf("the audit key is still kept in plain: %s", b)
	}
	if code, _, errs := keyshift(t, "", "audit", "verify", "--keyset-dir", r.ksDir, "--audit-key-file", keyFile, "--audit-kms", "local:///elsewhere"); code != 1 || !strings.Contains(errs, "not under local:///elsewhere") {
		t.Fatalf("verify naming another KMS key: %d %q", code, errs)
	}
}

// The controller's logs carry every audit record whole (for the log
// pipeline), and never the audit key.
func TestControllerLogsRecordsNotTheAuditKey(t *testing.T) {
	r := newAuditRig(t)
	logs := r.runUntil(t, 3)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(r.trail), "audit.key"))
	if err != nil {
		t.Fatal(err)
	}
	var stored struct{ Key []byte }
	if err := json.Unmarshal(b, &stored); err != nil || len(stored.Key) != 32 {
		t.Fatalf("audit key file %s: %v", b, err)
	}
	for _, enc := range []string{string(stored.Key), hex.EncodeToString(stored.Key), base64.StdEncoding.EncodeToString(stored.Key), base64.RawURLEncoding.EncodeToString(stored.Key)} {
		if strings.Contains(logs, enc) {
			t.Fatalf("the audit key reached the logs:\n%s", logs)
		}
	}
	var exported []string
	for _, line := range strings.Split(logs, "\n") {
		var entry struct {
			Record string `json:"audit_record"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Record != "" {
			exported = append(exported, entry.Record)
		}
	}
	if len(exported) < 3 {
		t.Fatalf("%d audit records in the logs:\n%s", len(exported), logs)
	}
	// The records exported from the logs verify as a file, to the head.
	p := filepath.Join(r.dir, "exported.jsonl")
	os.WriteFile(p, []byte(strings.Join(exported, "\n")+"\n"), 0o600)
	if code, out, errs := keyshift(t, "", "audit", "verify", "--file", p, "--keyset-dir", r.ksDir, "--audit-key-file", filepath.Join(filepath.Dir(r.trail), "audit.key")); code != 0 {
		t.Fatalf("verify of the records exported from the logs: %d %q %q", code, out, errs)
	}
}
