// Package statuscmd is the command line of the cluster-wide rotation
// status, shared by `keyshift status --cluster` and the kubectl plugin
// binary kubectl-keyshift (`kubectl keyshift status`). It reads the
// kubeconfig as kubectl does and hands the work to internal/clusterstatus.
package statuscmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/internal/clusterstatus"
)

// Defaults: where `kubectl apply -k manifests/` puts the controller, and
// the name of its metrics port (manifests/controller/deployment.yaml).
const (
	DefaultControllerNamespace = "keyshift-system"
	DefaultControllerPort      = "metrics"
)

// Run lists the keysets of the kubeconfig's cluster with their rotation
// state. name is the command as the user typed it, for usage text.
func Run(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s [flags]\n\nEvery keyset of a namespace (or of all, with -A): primary and pending\n"+
			"version, how many pods have the pending version, why the controller is\nblocked, and its next step.\n\nflags:\n", name)
		fs.PrintDefaults()
	}
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)")
	kubeContext := fs.String("context", "", "kubeconfig context (default: its current context)")
	var namespace, output string
	var all bool
	fs.StringVar(&namespace, "namespace", "", "namespace whose keysets to list (default: the context's namespace)")
	fs.StringVar(&namespace, "n", "", "short for --namespace")
	fs.BoolVar(&all, "all-namespaces", false, "list the keysets of every namespace")
	fs.BoolVar(&all, "A", false, "short for --all-namespaces")
	fs.StringVar(&output, "output", "table", "table or json")
	fs.StringVar(&output, "o", "table", "short for --output")
	controllerURL := fs.String("controller", "", "the controller's metrics address, e.g. http://127.0.0.1:9496 (default: reach the leading controller's pod through the API server)")
	controllerNS := fs.String("controller-namespace", DefaultControllerNamespace, "namespace of the controller's pods")
	controllerPort := fs.String("controller-port", DefaultControllerPort, "the controller pods' metrics port, by name or number")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on the whole command")
	if err := clikit.Parse(fs, args, stderr); err != nil {
		return err
	}
	if output != "table" && output != "json" {
		return fmt.Errorf("-o %q: write table or json", output)
	}
	if all && namespace != "" {
		return errors.New("--namespace and --all-namespaces: give one")
	}

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = *kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: *kubeContext}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	rc, err := cc.ClientConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	if namespace == "" && !all {
		if namespace, _, err = cc.Namespace(); err != nil {
			return fmt.Errorf("kubeconfig: %w", err)
		}
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	var source clusterstatus.ControllerSource
	if *controllerURL != "" {
		if source, err = clusterstatus.FromURL(*controllerURL, &http.Client{}); err != nil {
			return err
		}
	} else {
		source = clusterstatus.ViaLeaderPod(client, *controllerNS, *controllerPort)
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep, err := clusterstatus.Collect(ctx, clusterstatus.Options{Client: client, Namespace: namespace, Controller: source, Now: time.Now()})
	if err != nil {
		return err
	}
	if c := rep.Controller; c.Error != "" {
		fmt.Fprintf(stderr, "%s: controller state not available (%s: %s); ACK counts are unknown (?) and blocked reasons are those last written on each Secret\n", name, c.Source, c.Error)
	}
	if output == "json" {
		return clusterstatus.JSON(stdout, rep)
	}
	if len(rep.Keysets) == 0 {
		where := "namespace " + namespace
		if all {
			where = "any namespace"
		}
		fmt.Fprintf(stderr, "No keysets found in %s.\n", where)
		return nil
	}
	return clusterstatus.Table(stdout, rep, all, time.Now())
}
