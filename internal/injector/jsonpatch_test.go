package injector

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
)

func TestDiff(t *testing.T) {
	tests := []struct {
		name, before, after, want string
	}{
		{"equal", `{"a":1,"b":[1,2]}`, `{"b":[1,2],"a":1}`, `[]`},
		{"add key", `{"a":1}`, `{"a":1,"b":{"c":true}}`, `[{"op":"add","path":"/b","value":{"c":true}}]`},
		{"remove key", `{"a":1,"b":2}`, `{"a":1}`, `[{"op":"remove","path":"/b"}]`},
		{"replace scalar", `{"a":1}`, `{"a":"1"}`, `[{"op":"replace","path":"/a","value":"1"}]`},
		{"replace with null", `{"a":1}`, `{"a":null}`, `[{"op":"replace","path":"/a","value":null}]`},
		{"add null", `{}`, `{"a":null}`, `[{"op":"add","path":"/a","value":null}]`},
		{"keys in sorted order", `{}`, `{"b":1,"a":2,"c":3}`,
			`[{"op":"add","path":"/a","value":2},{"op":"add","path":"/b","value":1},{"op":"add","path":"/c","value":3}]`},
		{"escaped keys", `{"m":{}}`, `{"m":{"a/b":1,"c~d":2}}`,
			`[{"op":"add","path":"/m/a~1b","value":1},{"op":"add","path":"/m/c~0d","value":2}]`},
		{"append", `{"l":[1,2]}`, `{"l":[1,2,3]}`, `[{"op":"add","path":"/l/2","value":3}]`},
		{"prepend", `{"l":[1,2]}`, `{"l":[0,1,2]}`, `[{"op":"add","path":"/l/0","value":0}]`},
		{"insert middle", `{"l":[1,3]}`, `{"l":[1,2,3]}`, `[{"op":"add","path":"/l/1","value":2}]`},
		{"remove middle", `{"l":[1,2,3]}`, `{"l":[1,3]}`, `[{"op":"remove","path":"/l/1"}]`},
		{"remove several", `{"l":[1,2,3,4]}`, `{"l":[1,4]}`, `[{"op":"remove","path":"/l/1"},{"op":"remove","path":"/l/1"}]`},
		{"replace element", `{"l":[1,2,3]}`, `{"l":[1,9,3]}`, `[{"op":"remove","path":"/l/1"},{"op":"add","path":"/l/1","value":9}]`},
		{"prepend before a changed named element", `{"c":[{"name":"app","env":[]}]}`, `{"c":[{"name":"side"},{"name":"app","env":[{"name":"X"}]}]}`,
			`[{"op":"add","path":"/c/0","value":{"name":"side"}},{"op":"add","path":"/c/1/env/0","value":{"name":"X"}}]`},
		{"named element edited in place", `{"c":[{"name":"a","v":1},{"name":"b","v":1}]}`, `{"c":[{"name":"a","v":1},{"name":"b","v":2}]}`,
			`[{"op":"replace","path":"/c/1/v","value":2}]`},
		{"type change", `{"a":[1]}`, `{"a":{"b":1}}`, `[{"op":"replace","path":"/a","value":{"b":1}}]`},
		{"big numbers kept exact", `{"n":1}`, `{"n":12345678901234567890}`, `[{"op":"replace","path":"/n","value":12345678901234567890}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := Diff([]byte(tt.before), []byte(tt.after))
			if err != nil {
				t.Fatal(err)
			}
			if ops == nil {
				ops = []Operation{}
			}
			got, _ := json.Marshal(ops)
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("patch (-want +got):\n%s", diff)
			}
			checkApplies(t, []byte(tt.before), []byte(tt.after), got)
		})
	}
}

func TestDiffRejectsBadJSON(t *testing.T) {
	for _, tt := range []struct{ before, after string }{
		{`{`, `{}`}, {`{}`, `nope`}, {`{} {}`, `{}`},
	} {
		if _, err := Diff([]byte(tt.before), []byte(tt.after)); err == nil {
			t.Errorf("Diff(%q, %q) succeeded", tt.before, tt.after)
		}
	}
}

// checkApplies applies patch to before with the library the API server
// uses and checks the result means the same JSON as after.
func checkApplies(t *testing.T, before, after, patch []byte) {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", patch, err)
	}
	out, err := p.Apply(before)
	if err != nil {
		t.Fatalf("apply %s to %s: %v", patch, before, err)
	}
	var got, want any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(after, &want); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("before %s + patch %s (-want +got):\n%s", before, patch, diff)
	}
}

// FuzzDiff checks that for any two JSON objects the patch, applied by the
// API server's library, turns the first into the second.
func FuzzDiff(f *testing.F) {
	f.Add(`{"a":[1,2,3]}`, `{"a":[3,2,1]}`)
	f.Add(`{"c":[{"name":"app"}]}`, `{"c":[{"name":"k"},{"name":"app","x":1}]}`)
	f.Add(`{"a":{"b":{"c":[]}}}`, `{"a":{"b":{"c":[null,{"d":"e"}]}},"f/g":"~"}`)
	f.Add(`{"l":[{"name":"a"},{"name":"a"},{"v":1}]}`, `{"l":[{"name":"a","v":2},{"v":1},{"name":"b"}]}`)
	f.Fuzz(func(t *testing.T, a, b string) {
		ca, okA := canonicalObject(a)
		cb, okB := canonicalObject(b)
		if !okA || !okB {
			return
		}
		ops, err := Diff(ca, cb)
		if err != nil {
			t.Fatalf("Diff: %v", err)
		}
		if ops == nil {
			ops = []Operation{}
		}
		patch, _ := json.Marshal(ops)
		checkApplies(t, ca, cb, patch)
	})
}

// canonicalObject re-encodes s when it is a JSON object, so duplicate keys
// and other ambiguities do not reach the comparison.
func canonicalObject(s string) ([]byte, bool) {
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil || m == nil {
		return nil, false
	}
	out, err := json.Marshal(m)
	return out, err == nil
}
