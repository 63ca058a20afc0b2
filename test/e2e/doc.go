// Package e2e tests the keyshift injector against a real Kubernetes API
// server and etcd: the manifests are rendered with kustomize and applied,
// the MutatingWebhookConfiguration points at an injector on 127.0.0.1, and
// pods are created through the API server, so admission, the JSON patch,
// the API server's own validation and Pod Security admission all run for
// real. No kubelet runs, so nothing is scheduled; what is checked is the
// pod the API server stores.
//
// The tests are behind the e2e build tag so `go test ./...` stays fast:
//
//	scripts/kube-build.sh   # once: ~25 min cold, cached after
//	go test -tags e2e -count=1 -v ./test/e2e/
//
// They fail, rather than skip, when the binaries are missing: asking for
// the e2e run and getting a skip would read as a pass.
package e2e
