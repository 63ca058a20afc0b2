//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// helmInstalled is TestNode's second install path, run once the kustomize
// install has passed every step: keyshift itself is removed (`kubectl
// delete -k manifests/`; the sample's KMS, namespace and keyset stay), then
// installed with `helm install` from charts/keyshift as the README says,
// with one replica each (the values take effect on a real cluster, and the
// rollout is quicker). A new pod is injected by the Helm-installed
// injector, and its sidecar seals and opens a note through the app. Then
// `helm uninstall` removes everything the chart made.
func (n *node) helmInstalled(ctx context.Context) {
	helm := helmBinary(n.t)
	n.kubectl("delete", "-k", "manifests/", "--wait=true", "--timeout=180s")
	n.eventually("namespace "+systemNS+" gone", 120*time.Second, func() (bool, string) {
		_, err := n.client.CoreV1().Namespaces().Get(ctx, systemNS, metav1.GetOptions{})
		return apierrors.IsNotFound(err), errString(err)
	})
	n.logf("kustomize install removed")

	n.run(helm, "install", "keyshift", chartDir, "--set", "injector.replicas=1", "--set", "controller.replicas=1",
		"--wait", "--timeout=180s")
	// The controller's KMS settings were in keyshift-system, gone with it;
	// the controller reads them at start (manifests/sample/kms).
	n.kubectl("apply", "-k", "manifests/sample/kms")
	n.kubectl("-n", systemNS, "rollout", "restart", "deployment/keyshift-controller")
	n.kubectl("-n", systemNS, "rollout", "status", "deployment/keyshift-controller", "--timeout=120s")
	for _, name := range []string{"keyshift-injector", "keyshift-controller"} {
		d, err := n.client.AppsV1().Deployments(systemNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			n.t.Fatal(err)
		}
		if d.Labels["app.kubernetes.io/managed-by"] != "Helm" || d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Status.ReadyReplicas < 1 {
			n.t.Fatalf("deployment %s: labels %v, replicas %v, %d ready; want Helm's, 1, 1", name, d.Labels, d.Spec.Replicas, d.Status.ReadyReplicas)
		}
	}
	mwc, err := n.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "keyshift-injector", metav1.GetOptions{})
	if err != nil || mwc.Labels["app.kubernetes.io/managed-by"] != "Helm" || len(mwc.Webhooks[0].ClientConfig.CABundle) == 0 {
		n.t.Fatalf("webhook configuration after helm install: %v; want Helm's, with the caBundle the injector set", err)
	}
	n.logf("helm install: injector and controller (1 replica each) available, webhook caBundle set by the injector")

	pod := samplePod(demoNS, "helm-installed", true)
	if _, err := n.client.CoreV1().Pods(demoNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		n.t.Fatalf("create %s: %v", pod.Name, err)
	}
	defer func() {
		_ = n.client.CoreV1().Pods(demoNS).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	}()
	p := n.waitPodReady(ctx, demoNS, pod.Name)
	if sc := sidecarOf(p); sc == nil || sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		n.t.Fatalf("pod %s: no native keyshift sidecar: %+v", p.Name, p.Spec.InitContainers)
	}
	text := "sealed through a Helm-installed keyshift by " + p.Name
	id, err := putNote(*p, text)
	if err != nil {
		n.t.Fatalf("pod %s: seal a note: %v", p.Name, err)
	}
	got, err := getNote(*p, id)
	if err != nil || got != text {
		n.t.Fatalf("pod %s: open the note: %q, %v; want %q", p.Name, got, err, text)
	}
	n.logf("pod %s injected by the Helm-installed injector: its sidecar sealed and opened a note", p.Name)

	n.run(helm, "uninstall", "keyshift", "--wait", "--timeout=180s")
	n.eventually("helm uninstall to remove keyshift", 120*time.Second, func() (bool, string) {
		_, errNS := n.client.CoreV1().Namespaces().Get(ctx, systemNS, metav1.GetOptions{})
		_, errHook := n.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "keyshift-injector", metav1.GetOptions{})
		_, errRole := n.client.RbacV1().ClusterRoles().Get(ctx, "keyshift-controller", metav1.GetOptions{})
		var left []string
		for what, err := range map[string]error{"namespace": errNS, "webhook": errHook, "cluster role": errRole} {
			if !apierrors.IsNotFound(err) {
				left = append(left, fmt.Sprintf("%s: %v", what, err))
			}
		}
		return len(left) == 0, strings.Join(left, "; ")
	})
	n.logf("helm uninstall: namespace, webhook configuration and cluster roles gone")
}
