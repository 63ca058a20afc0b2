package archtest

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/keyshift/keyshift/"

// public are the only packages outside internal/ (besides cmd, tests and
// examples): what apps and other tools import.
var public = []string{"sidecar/client", "sidecar/api/v1", "injector/annotation"}

// products are the three programs' own packages; each may import
// libraries, never another product.
var products = []string{"internal/sidecar", "internal/injector", "internal/controller"}

// assemblies put several parts together for one command.
var assemblies = []string{"internal/demo", "internal/loadtest"}

// layer of a package path (module-relative): a higher number sits higher
// in the map and may import only its own layer or lower ones; a product
// imports no other product, and the public API only itself and podspec.
func layer(p string) (int, string) {
	under := func(roots []string) string {
		for _, r := range roots {
			if p == r || strings.HasPrefix(p, r+"/") {
				return r
			}
		}
		return ""
	}
	switch {
	case strings.HasPrefix(p, "cmd/"):
		return 4, "cmd"
	case strings.HasPrefix(p, "test/"), strings.HasPrefix(p, "examples/"):
		return 5, "test"
	case under(assemblies) != "":
		return 3, under(assemblies)
	case under(products) != "":
		return 2, under(products)
	case under(public) != "":
		return 1, "public"
	default:
		return 1, "library"
	}
}

func TestImportsPointDown(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		from := strings.TrimPrefix(f[0], module)
		pkgs++
		if !strings.HasPrefix(from, "internal/") && !strings.HasPrefix(from, "cmd/") && !strings.HasPrefix(from, "test/") && !slices.Contains(public, from) {
			t.Errorf("%s is importable by anyone: move it under internal/, or make it part of the public API (%v)", from, public)
		}
		fl, fg := layer(from)
		for _, imp := range f[1:] {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			to := strings.TrimPrefix(imp, module)
			tl, tg := layer(to)
			switch {
			case tl > fl:
				t.Errorf("%s (%s) imports %s (%s), which sits above it", from, fg, to, tg)
			case tl == fl && fl == 2 && fg != tg:
				t.Errorf("product %s imports product %s", from, to)
			case fg == "public" && tg != "public" && to != "internal/podspec":
				t.Errorf("public %s imports %s: what apps import may depend only on the public API and internal/podspec", from, to)
			}
		}
	}
	if pkgs < 30 {
		t.Fatalf("go list found %d packages; is the module pattern right?", pkgs)
	}
}
