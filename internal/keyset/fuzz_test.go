package keyset

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// FuzzParse checks that any input either parses into a document that
// validates and survives a Marshal/Parse round trip unchanged, or is
// refused with ErrInvalid: never a panic, never a half-valid document.
func FuzzParse(f *testing.F) {
	ks, _ := New("payments", "local:///k", []byte{1, 2, 3}, "1", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ks, _ = ks.AddPending([]byte{4, 5}, "1", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC))
	ks.Policy = &Policy{RotationPeriod: Duration(time.Hour)}
	good, _ := ks.Marshal()
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"name":"a","kms":"x","versions":[{"version":1,"state":"primary","wrappedKey":"AA==","createdAt":"2026-01-01T00:00:00Z","stateChangedAt":"2026-01-01T00:00:00Z"}],"policy":{"retention":"-1h"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error of another kind: %v", err)
			}
			return
		}
		if err := ks.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid document: %v", err)
		}
		b, err := ks.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		again, err := Parse(b)
		if err != nil {
			t.Fatalf("re-parse of marshalled document: %v", err)
		}
		b2, _ := again.Marshal()
		if !bytes.Equal(b, b2) {
			t.Fatal("round trip changed the document")
		}
	})
}
