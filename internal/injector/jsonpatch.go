package injector

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// Operation is one RFC 6902 JSON patch operation.
type Operation struct {
	// Op is add, remove or replace (the only three a diff needs).
	Op string `json:"op"`
	// Path is an RFC 6901 JSON pointer.
	Path string `json:"path"`
	// Value is the new value; absent for remove. Raw, so that a JSON null
	// survives as a value.
	Value json.RawMessage `json:"value,omitempty"`
}

// Diff returns the JSON patch that turns the JSON document before into
// after. The output is deterministic (object keys in sorted order), minimal
// for the edits an injector makes (an insertion into an array is one add,
// not a rewrite of every later element), and empty when the documents are
// equal. Together with a pure Pod -> Pod function it replaces hand-built
// patches: the patch can only say what the function did.
func Diff(before, after []byte) ([]Operation, error) {
	a, err := decodeJSON(before)
	if err != nil {
		return nil, fmt.Errorf("injector: diff: before: %w", err)
	}
	b, err := decodeJSON(after)
	if err != nil {
		return nil, fmt.Errorf("injector: diff: after: %w", err)
	}
	var d differ
	d.value("", a, b)
	return d.ops, d.err
}

func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after the JSON value")
	}
	return v, nil
}

type differ struct {
	ops []Operation
	err error
}

func (d *differ) emit(op, path string, v any) {
	o := Operation{Op: op, Path: path}
	if op != "remove" {
		raw, err := json.Marshal(v)
		if err != nil && d.err == nil {
			d.err = fmt.Errorf("injector: diff: %s: %w", path, err)
		}
		o.Value = raw
	}
	d.ops = append(d.ops, o)
}

func (d *differ) value(path string, a, b any) {
	switch av := a.(type) {
	case map[string]any:
		if bv, ok := b.(map[string]any); ok {
			d.object(path, av, bv)
			return
		}
	case []any:
		if bv, ok := b.([]any); ok {
			d.array(path, av, bv)
			return
		}
	}
	if !equalJSON(a, b) {
		d.emit("replace", path, b)
	}
}

func (d *differ) object(path string, a, b map[string]any) {
	keys := make([]string, 0, len(a)+len(b))
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, dup := a[k]; !dup {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := path + "/" + escapePointer(k)
		av, inA := a[k]
		bv, inB := b[k]
		switch {
		case !inB:
			d.emit("remove", p, nil)
		case !inA:
			d.emit("add", p, bv)
		default:
			d.value(p, av, bv)
		}
	}
}

// array aligns the two arrays by element identity and emits removals,
// additions and in-place edits along the alignment. An element's identity
// is its "name" when it is an object with one (the merge key of
// containers, env, volumes, mounts and ports), else its whole value; the
// alignment is a longest common subsequence of identities. So an element
// inserted before an element that also changed is one add plus the edits
// of that element, not a rewrite of everything after the insertion point.
func (d *differ) array(path string, a, b []any) {
	// Common prefix and suffix first: they need no alignment and keep the
	// quadratic part small.
	pre := 0
	for pre < len(a) && pre < len(b) && equalJSON(a[pre], b[pre]) {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && equalJSON(a[len(a)-1-suf], b[len(b)-1-suf]) {
		suf++
	}
	ma, mb := a[pre:len(a)-suf], b[pre:len(b)-suf]
	match := align(ma, mb)
	pos := pre
	i, j := 0, 0
	for i < len(ma) || j < len(mb) {
		switch {
		case i < len(ma) && j < len(mb) && match[i] == j:
			d.value(path+"/"+strconv.Itoa(pos), ma[i], mb[j])
			i, j, pos = i+1, j+1, pos+1
		case i < len(ma) && match[i] < 0:
			d.emit("remove", path+"/"+strconv.Itoa(pos), nil)
			i++
		default:
			d.emit("add", path+"/"+strconv.Itoa(pos), mb[j])
			j, pos = j+1, pos+1
		}
	}
}

// maxAlign bounds the alignment table; beyond it, arrays are aligned by
// position (still a correct patch, only a longer one).
const maxAlign = 1 << 20

// align returns, for each element of a, the index of the element of b it
// is matched with, or -1. Matches are increasing in both arrays.
func align(a, b []any) []int {
	match := make([]int, len(a))
	for i := range match {
		match[i] = -1
	}
	if len(a)*len(b) > maxAlign {
		for i := range min(len(a), len(b)) {
			match[i] = i
		}
		return match
	}
	ka, kb := make([]string, len(a)), make([]string, len(b))
	for i, v := range a {
		ka[i] = identity(v)
	}
	for j, v := range b {
		kb[j] = identity(v)
	}
	// lcs[i][j] is the LCS length of ka[i:] and kb[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if ka[i] == kb[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case ka[i] == kb[j]:
			match[i] = j
			i, j = i+1, j+1
		case lcs[i+1][j] >= lcs[i][j+1]:
			i++
		default:
			j++
		}
	}
	return match
}

// identity is what align matches elements by.
func identity(v any) string {
	if m, ok := v.(map[string]any); ok {
		if name, ok := m["name"].(string); ok {
			return "name:" + name
		}
	}
	raw, _ := json.Marshal(v)
	return "value:" + string(raw)
}

func equalJSON(a, b any) bool { return reflect.DeepEqual(a, b) }

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapePointer(s string) string { return pointerEscaper.Replace(s) }
