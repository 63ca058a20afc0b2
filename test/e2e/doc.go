// Package e2e tests keyshift end to end, at two depths.
//
// Against a bare kube-apiserver and etcd (TestInjectorAgainstRealAPIServer,
// TestControllerAgainstRealAPIServer): the manifests are rendered with
// kustomize and applied, the MutatingWebhookConfiguration points at an
// injector on 127.0.0.1, and pods are created through the API server, so
// admission, the JSON patch, the API server's own validation and Pod
// Security admission all run for real; what is checked is the pod the API
// server stores, and the controller's Secret updates, Events and Lease.
//
// On a real one-node cluster (TestNode, node_test.go; scripts/cluster.sh):
// kubelet, containerd, runc, CNI, kube-proxy and CoreDNS run the whole
// system installed from manifests/ as a user installs it, with images built
// without Docker (test/images), and the test watches rotations under
// traffic and faults. It needs root. KEYSHIFT_CLUSTER=existing reuses a
// cluster already up (scripts/cluster.sh up) while iterating.
//
// The tests are behind the e2e build tag so `go test ./...` stays fast;
// scripts/e2e.sh (make e2e) builds what they need first and runs them:
//
//	make e2e
//	scripts/e2e.sh -run TestNode
//
// They fail, rather than skip, when something is missing: asking for the
// e2e run and getting a skip would read as a pass.
package e2e
