package injector

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyshift/keyshift/injector/annotation"
)

// FuzzParseAnnotations feeds arbitrary values to every keyshift annotation.
// Each input is either a valid PodConfig or a denial (ErrDenied) whose
// message names an annotation: never a panic, never another error kind.
func FuzzParseAnnotations(f *testing.F) {
	f.Add("true", "payments,users=users-keyset", "/var/run/keyshift", "8080", "1000,1001", "100m", "debug")
	f.Add("yes", "", "relative", "-1", "root", "lots", "loud")
	f.Add("true", "a=b=c,,", "/", "99999", ",", "1Gi", "")
	known := annotation.Known()
	f.Fuzz(func(t *testing.T, inject, keysets, socketDir, extAuthz, uids, cpu, level string) {
		vals := []string{inject, keysets, socketDir, extAuthz, uids, cpu, level}
		ann := map[string]string{}
		for i, k := range known {
			ann[k] = vals[i%len(vals)]
		}
		ann[annotation.Inject], ann[annotation.Keysets] = inject, keysets
		pc, err := ParseAnnotations(ann, Config{Image: "keyshift/keyshift:fuzz"})
		if err != nil {
			if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "keyshift.io/") {
				t.Fatalf("error of another kind or naming no annotation: %v", err)
			}
			return
		}
		if pc == nil {
			t.Fatal("nil config without an error")
		}
	})
}
