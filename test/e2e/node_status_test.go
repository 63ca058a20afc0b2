//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/keyshift/keyshift/internal/clusterstatus"
)

// statusThroughAPIServer is what an operator runs on a real cluster:
// `keyshift status --cluster` and the kubectl plugin reach the leading
// controller pod through the API server's pod proxy (the path the
// apiserver-only test cannot take: there is no kubelet there) and report
// the keyset as the Secret holds it.
func (n *node) statusThroughAPIServer(ctx context.Context) {
	dir := n.t.TempDir()
	ks, plugin := filepath.Join(dir, "keyshift"), filepath.Join(dir, "kubectl-keyshift")
	n.run("go", "build", "-o", ks, "./cmd/keyshift")
	n.run("go", "build", "-o", plugin, "./cmd/kubectl-keyshift")
	doc := n.doc(ctx)

	var rep clusterstatus.Report
	out := n.run(ks, "status", "--cluster", "-n", demoNS, "-o", "json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		n.t.Fatalf("keyshift status --cluster -o json: %v\n%s", err, out)
	}
	c := rep.Controller
	if c.Error != "" || !c.Leading || !strings.HasPrefix(c.Source, "pod "+systemNS+"/keyshift-controller-") {
		n.t.Fatalf("controller state not read from the leading pod through the API server: %+v", c)
	}
	var row *clusterstatus.Row
	for i := range rep.Keysets {
		if rep.Keysets[i].Name == keysetName {
			row = &rep.Keysets[i]
		}
	}
	// The controller may promote between the reads: the report's primary
	// is the Secret's from before it or from after it.
	after := n.doc(ctx)
	if row == nil || row.Error != "" || (row.Primary != doc.Primary().Version && row.Primary != after.Primary().Version) || row.Next.Action == "" {
		n.t.Fatalf("keyset %s in the report: %+v (the Secret's primary is v%d, then v%d)", keysetName, row, doc.Primary().Version, after.Primary().Version)
	}

	// The plugin, found by kubectl on PATH, prints the same report.
	// kubectl hands a plugin its arguments, not its own flags: the plugin
	// reads KUBECONFIG as an operator's shell sets it.
	cmd := exec.CommandContext(ctx, filepath.Join(binDir(), "kubectl"), "keyshift", "status", "-n", demoNS, "-o", "json")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+n.kubeconfig, "PATH="+dir+":"+binDir()+":"+os.Getenv("PATH"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	pb, err := cmd.Output()
	pout := string(pb)
	if err != nil {
		n.t.Fatalf("kubectl keyshift status: %v\n%s%s", err, pout, stderr.String())
	}
	var prep clusterstatus.Report
	if err := json.Unmarshal([]byte(pout), &prep); err != nil || prep.Controller.Source != c.Source || len(prep.Keysets) != len(rep.Keysets) {
		n.t.Fatalf("kubectl keyshift status differs from keyshift status --cluster: %v\n%s", err, pout)
	}
	n.logf("status --cluster through the API server: controller %s, %s primary v%d, next %s", c.Source, keysetName, row.Primary, row.Next.Action)
}
