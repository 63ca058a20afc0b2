package testbin

import (
	"encoding/base64"
	"fmt"
)

// Encodings are the forms a secret could leak into a log in: base64,
// base64url, hex, their 12-byte prefixes, and the raw text when printable.
// A test that says a secret never reaches the logs looks for every one.
func Encodings(b []byte) map[string]string {
	m := map[string]string{
		"base64":    base64.StdEncoding.EncodeToString(b),
		"base64url": base64.RawURLEncoding.EncodeToString(b),
		"hex":       fmt.Sprintf("%x", b),
	}
	if len(b) >= 12 {
		m["base64 prefix"] = base64.StdEncoding.EncodeToString(b[:12])
		m["hex prefix"] = fmt.Sprintf("%x", b[:12])
	}
	printable := true
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			printable = false
		}
	}
	if printable {
		m["raw"] = string(b)
	}
	return m
}
