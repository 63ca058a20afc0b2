//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/sidecar"
)

// The sample's names (manifests/sample).
const (
	demoNS     = "keyshift-demo"
	systemNS   = "keyshift-system"
	kmsNS      = "keyshift-kms"
	appName    = "shop"
	keysetName = "payments"
	sampleKEK  = "aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/6f5e3a1c-7d2b-4c9e-9a8f-0b1c2d3e4f50"
	clusterDir = "/var/tmp/keyshift-cluster"
	imageTag   = "v0.1.0"
)

// node is a running one-node cluster (scripts/cluster.sh) and clients for it.
type node struct {
	t          *testing.T
	root       string
	kubeconfig string
	client     kubernetes.Interface
	keyshift   string // the keyshift CLI, built for the host
	start      time.Time
}

// nodeTestNeeds is the least time TestNode starts with: its run, about 11
// minutes here, with room to spare.
const nodeTestNeeds = 20 * time.Minute

// startNode brings the cluster up with scripts/cluster.sh and takes it down
// when the test ends, failing the test if the host is not as it was.
// KEYSHIFT_CLUSTER=existing reuses a cluster already up (for iterating).
func startNode(t *testing.T) *node {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("TestNode runs a kubelet, containerd and iptables: run it as root (make e2e)")
	}
	// go test's -timeout panics without running cleanups, which would
	// leave the whole cluster running: refuse to start without the time.
	if d, ok := t.Deadline(); ok && time.Until(d) < nodeTestNeeds {
		t.Fatalf("TestNode takes about 11 minutes and must have %v to bring the cluster down again; go test's -timeout leaves %v: run it with -timeout 30m (make e2e does)", nodeTestNeeds, time.Until(d).Round(time.Second))
	}
	n := &node{t: t, root: repoRoot(t), kubeconfig: filepath.Join(clusterDir, "admin.kubeconfig"), start: time.Now()}
	if os.Getenv("KEYSHIFT_CLUSTER") != "existing" {
		n.script("up")
		t.Cleanup(func() {
			if t.Failed() {
				n.dumpState()
			}
			if out, err := n.exec("", filepath.Join(n.root, "scripts", "cluster.sh"), "down"); err != nil {
				t.Errorf("cluster down: %v\n%s", err, out)
			}
		})
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", n.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	if n.client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	n.keyshift = filepath.Join(t.TempDir(), "keyshift")
	n.run("go", "build", "-o", n.keyshift, "./cmd/keyshift")
	return n
}

// exec runs a command in the repository with the cluster's kubeconfig and
// the cached binaries first on PATH, returning its combined output.
func (n *node) exec(stdin string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = n.root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+n.kubeconfig, "PATH="+binDir()+":"+os.Getenv("PATH"))
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// run is exec that fails the test on error.
func (n *node) run(name string, args ...string) string {
	n.t.Helper()
	out, err := n.exec("", name, args...)
	if err != nil {
		n.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (n *node) script(args ...string) string {
	n.t.Helper()
	return n.run(filepath.Join(n.root, "scripts", "cluster.sh"), args...)
}

func (n *node) kubectl(args ...string) string {
	n.t.Helper()
	return n.run(filepath.Join(binDir(), "kubectl"), args...)
}

// logf prints a timeline line: seconds since the test began.
func (n *node) logf(format string, args ...any) {
	n.t.Logf("[%7.2fs] %s", time.Since(n.start).Seconds(), fmt.Sprintf(format, args...))
}

// dumpState prints what an engineer looks at first when the e2e fails.
func (n *node) dumpState() {
	for _, args := range [][]string{
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
		{"-n", systemNS, "logs", "-l", "app.kubernetes.io/name=keyshift-controller", "--tail=60", "--prefix"},
		{"-n", systemNS, "logs", "-l", "app.kubernetes.io/name=keyshift-injector", "--tail=30", "--prefix"},
		{"-n", demoNS, "logs", "-l", "app.kubernetes.io/name=" + appName, "-c", "keyshift", "--tail=30", "--prefix"},
	} {
		out, _ := n.exec("", filepath.Join(binDir(), "kubectl"), args...)
		n.t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
	for _, f := range []string{"kubelet", "containerd"} {
		data, _ := os.ReadFile(filepath.Join(clusterDir, "logs", f+".log"))
		if len(data) > 6000 {
			data = data[len(data)-6000:]
		}
		n.t.Logf("%s.log (tail):\n%s", f, data)
	}
}

// eventually polls cond every 200ms until it returns true or timeout.
func (n *node) eventually(what string, timeout time.Duration, cond func() (bool, string)) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(200 * time.Millisecond)
	}
	n.t.Fatalf("timed out after %v waiting for %s (last: %s)", timeout, what, last)
}

// appPods are the sample's running pods, by name.
func (n *node) appPods(ctx context.Context) []corev1.Pod {
	n.t.Helper()
	l, err := n.client.CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + appName})
	if err != nil {
		n.t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// appStats is the example app's GET /stats.
type appStats struct {
	OK        int64            `json:"ok"`
	Failed    int64            `json:"failed"`
	ByVersion map[string]int64 `json:"by_version"`
	LastError string           `json:"last_error"`
	Failures  []struct {
		At    time.Time `json:"at"`
		Op    string    `json:"op"`
		Error string    `json:"error"`
	} `json:"failures"`
}

var httpc = &http.Client{Timeout: 3 * time.Second}

func getJSON(url string, v any) error {
	resp, err := httpc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, v)
}

func podStats(p corev1.Pod) (appStats, error) {
	var s appStats
	err := getJSON("http://"+p.Status.PodIP+":8080/stats", &s)
	return s, err
}

// keyring is the part of the app's GET /keyring (its sidecar's Status) the
// test reads.
type keyring struct {
	Keysets []struct {
		Name     string `json:"name"`
		Primary  uint32 `json:"primary"`
		Source   string `json:"source"`
		Versions []struct {
			Version uint32 `json:"version"`
			State   string `json:"state"`
		} `json:"versions"`
	} `json:"keysets"`
}

// loaded reports the newest version the pod's sidecar holds and its primary.
func loaded(p corev1.Pod) (latest, primary uint32, source string, err error) {
	var k keyring
	if err = getJSON("http://"+p.Status.PodIP+":8080/keyring", &k); err != nil {
		return 0, 0, "", err
	}
	for _, ks := range k.Keysets {
		if ks.Name != keysetName {
			continue
		}
		for _, v := range ks.Versions {
			if v.Version > latest {
				latest = v.Version
			}
		}
		return latest, ks.Primary, ks.Source, nil
	}
	return 0, 0, "", fmt.Errorf("keyset %s not loaded", keysetName)
}

// doc reads the keyset document from its Secret.
func (n *node) doc(ctx context.Context) *keyset.Keyset {
	n.t.Helper()
	s, err := n.client.CoreV1().Secrets(demoNS).Get(ctx, keysetName, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	ks, err := keyset.Parse(s.Data["keyset.json"])
	if err != nil {
		n.t.Fatal(err)
	}
	return ks
}

// traffic sums the sample pods' /stats: requests that failed since a mark.
type traffic struct {
	mu   sync.Mutex
	base map[string]appStats
}

func (n *node) markTraffic(ctx context.Context) *traffic {
	tr := &traffic{base: map[string]appStats{}}
	for _, p := range n.appPods(ctx) {
		s, err := podStats(p)
		if err != nil {
			n.t.Fatalf("pod %s /stats: %v", p.Name, err)
		}
		tr.base[p.Name] = s
	}
	return tr
}

// since returns the requests and failures in every pod since the mark.
func (n *node) since(ctx context.Context, tr *traffic) (ok, failed int64, errs []string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, p := range n.appPods(ctx) {
		s, err := podStats(p)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: /stats: %v", p.Name, err))
			continue
		}
		b := tr.base[p.Name]
		ok += s.OK - b.OK
		failed += s.Failed - b.Failed
		for _, f := range s.Failures {
			if len(b.Failures) == 0 || f.At.After(b.Failures[len(b.Failures)-1].At) {
				errs = append(errs, fmt.Sprintf("%s %s %s: %s", p.Name, f.At.Format("15:04:05.000"), f.Op, f.Error))
			}
		}
	}
	return ok, failed, errs
}

// TestNode runs the whole system on a real one-node cluster: installed from
// manifests/ as a user installs it, an injected Deployment of the example
// app serving traffic, two controller replicas rotating under that traffic,
// and faults.
func TestNode(t *testing.T) {
	n := startNode(t)
	parent := t
	ctx := context.Background()

	// Images, written without Docker and imported into the node's containerd.
	imgDir := t.TempDir()
	n.run("go", "run", "./test/images", "-out", imgDir, "-tag", imageTag)
	tars, _ := filepath.Glob(filepath.Join(imgDir, "*.tar"))
	n.script(append([]string{"load"}, tars...)...)
	n.logf("images built and imported: %d", len(tars))

	// Baseline for the start-up figure: the same app without injection.
	plain := n.podStartTimes(ctx, false)

	// Install as the README says.
	n.kubectl("apply", "-k", "manifests/")
	n.kubectl("apply", "-k", "manifests/sample/kms")
	n.kubectl("-n", systemNS, "rollout", "restart", "deployment/keyshift-controller")
	for _, d := range []string{"deployment/keyshift-injector", "deployment/keyshift-controller"} {
		n.kubectl("-n", systemNS, "rollout", "status", d, "--timeout=180s")
	}
	n.kubectl("-n", kmsNS, "rollout", "status", "deployment/local-kms", "--timeout=120s")
	n.logf("keyshift installed: injector and controller (2 replicas each) available")

	n.createKeyset()
	n.kubectl("apply", "-k", "manifests/sample")
	n.kubectl("-n", demoNS, "rollout", "status", "deployment/"+appName, "--timeout=300s")
	pods := n.appPods(ctx)
	if len(pods) != 3 {
		t.Fatalf("want 3 running %s pods, have %d", appName, len(pods))
	}
	for _, p := range pods {
		n.checkInjectedPod(ctx, p)
	}
	n.logf("sample app: 3 pods, each sidecar ready before its app, app as UID 1000 and sidecar as 65532")

	injected := n.podStartTimes(ctx, true)
	t.Logf("FIGURE pod start to Ready (create -> Ready, %d pods each): without injection %s; with injection %s",
		len(plain), summarize(plain), summarize(injected))
	n.sidecarMemory(ctx)

	for _, step := range []struct {
		name string
		run  func(context.Context)
	}{
		{"xDS refuses strangers", n.xdsRefusesStrangers},
		{"rotation under traffic", n.rotationUnderTraffic},
		{"status through the API server", n.statusThroughAPIServer},
		{"leader deleted mid-rotation", n.leaderDeletedMidRotation},
		{"sidecar killed", n.sidecarKilled},
		{"KMS stopped for 60s", n.kmsStopped},
		{"injector down", n.injectorDown},
		// Last: the second install path, Helm, once the kustomize one passed.
		{"installed with Helm", n.helmInstalled},
	} {
		if !t.Run(step.name, func(t *testing.T) { n.t = t; defer func() { n.t = parent }(); step.run(ctx) }) {
			break
		}
	}
}

// createKeyset follows manifests/sample/kustomization.yaml: port-forward to
// the sample KMS, then `keyshift keyset create` with the sample's KEK.
func (n *node) createKeyset() {
	n.t.Helper()
	pf := exec.Command(filepath.Join(binDir(), "kubectl"), "--kubeconfig", n.kubeconfig, "-n", kmsNS, "port-forward", "svc/local-kms", "4599:8080")
	var pfOut bytes.Buffer
	pf.Stdout, pf.Stderr = &pfOut, &pfOut
	if err := pf.Start(); err != nil {
		n.t.Fatal(err)
	}
	defer func() { _ = pf.Process.Kill(); _ = pf.Wait() }()
	n.eventually("kubectl port-forward", 30*time.Second, func() (bool, string) {
		return strings.Contains(pfOut.String(), "Forwarding from"), pfOut.String()
	})
	cmd := exec.Command(n.keyshift, "keyset", "create", "--secret", demoNS+"/"+keysetName, "--name", keysetName,
		"--kms", sampleKEK, "--rotation-period", rotationPeriod.String(), "--retention", "2160h")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+n.kubeconfig, "AWS_ENDPOINT_URL_KMS=http://127.0.0.1:4599",
		"AWS_REGION=eu-west-2", "AWS_ACCESS_KEY_ID=demo", "AWS_SECRET_ACCESS_KEY=demo")
	out, err := cmd.CombinedOutput()
	if err != nil {
		n.t.Fatalf("keyshift keyset create: %v\n%s", err, out)
	}
	n.logf("keyset %s/%s created (v1 primary, rotation period %s)", demoNS, keysetName, rotationPeriod)
}

// rotationPeriod is the sample keyset's policy in the e2e (the sample's
// instructions say 720h): short, so the controller rotates while we watch.
const rotationPeriod = 2 * time.Minute

// checkInjectedPod checks one sample pod: a native sidecar that became
// ready before the app started, different UIDs, and working crypto.
func (n *node) checkInjectedPod(ctx context.Context, p corev1.Pod) {
	n.t.Helper()
	var side *corev1.Container
	for i := range p.Spec.InitContainers {
		if p.Spec.InitContainers[i].Name == "keyshift" {
			side = &p.Spec.InitContainers[i]
		}
	}
	if side == nil || side.RestartPolicy == nil || *side.RestartPolicy != corev1.ContainerRestartPolicyAlways || side.StartupProbe == nil {
		n.t.Fatalf("pod %s: no native keyshift sidecar with a startup probe: %+v", p.Name, p.Spec.InitContainers)
	}
	sideUID, appUID := side.SecurityContext.RunAsUser, p.Spec.SecurityContext.RunAsUser
	if sideUID == nil || appUID == nil || *sideUID == *appUID {
		n.t.Fatalf("pod %s: sidecar UID %v and app UID %v must differ", p.Name, sideUID, appUID)
	}
	var appStart time.Time
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == "app" && cs.State.Running != nil {
			appStart = cs.State.Running.StartedAt.Time
		}
	}
	// The sidecar's own "sidecar ready" line, stamped by the runtime.
	logs := n.kubectl("-n", demoNS, "logs", p.Name, "-c", "keyshift", "--timestamps")
	var ready time.Time
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "sidecar ready") {
			ts, _, _ := strings.Cut(line, " ")
			ready, _ = time.Parse(time.RFC3339Nano, ts)
			break
		}
	}
	if ready.IsZero() || appStart.IsZero() || appStart.Before(ready.Truncate(time.Second)) {
		n.t.Fatalf("pod %s: sidecar ready at %v, app started at %v: the app must start after the sidecar is ready\n%s", p.Name, ready, appStart, logs)
	}
	// The sidecar found its container's memory limit through the cgroup
	// and gave the Go runtime MemoryLimitRatio of it (sidecar.TuneRuntime).
	limit := side.Resources.Limits.Memory().Value()
	want := int64(float64(limit) * sidecar.MemoryLimitRatio)
	if limit == 0 || !hasLogAttr(logs, "go runtime", "memory_limit_bytes", strconv.FormatInt(want, 10)) {
		n.t.Fatalf("pod %s: the sidecar's memory limit is %d bytes: want its log line \"go runtime\" with memory_limit_bytes %d\n%s", p.Name, limit, want, logs)
	}
	n.eventually("pod "+p.Name+" app traffic", 30*time.Second, func() (bool, string) {
		s, err := podStats(p)
		if err != nil {
			return false, err.Error()
		}
		return s.OK > 0 && s.Failed == 0, fmt.Sprintf("%+v", s)
	})
	n.logf("pod %s: sidecar ready %s, app started %s (UID %d vs sidecar %d), encrypting and decrypting",
		p.Name, ready.Format("15:04:05.000"), appStart.Format("15:04:05"), *appUID, *sideUID)
}

// hasLogAttr reports whether a log line with msg carries key=value, in
// the text or the JSON format.
func hasLogAttr(logs, msg, key, value string) bool {
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, msg) && (strings.Contains(line, " "+key+"="+value) || strings.Contains(line, `"`+key+`":`+value)) {
			return true
		}
	}
	return false
}

// podStartTimes creates three pods of the example app and times create ->
// Ready, in the injected namespace or in a plain one.
func (n *node) podStartTimes(ctx context.Context, inject bool) []time.Duration {
	n.t.Helper()
	ns := "keyshift-plain"
	if inject {
		ns = demoNS
	} else if _, err := n.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		n.t.Fatal(err)
	}
	var out []time.Duration
	for i := 0; i < 3; i++ {
		pod := samplePod(ns, fmt.Sprintf("start-%v-%d", inject, i), inject)
		t0 := time.Now()
		if _, err := n.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			n.t.Fatal(err)
		}
		n.waitPodReady(ctx, ns, pod.Name)
		out = append(out, time.Since(t0))
		_ = n.client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	}
	return out
}

// samplePod is the sample Deployment's pod, alone.
func samplePod(ns, name string, inject bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"keyshift-e2e": "start"}},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(1000)), RunAsGroup: ptr(int64(1000)), FSGroup: ptr(int64(1000)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "app", Image: "keyshift/example-app:" + imageTag, ImagePullPolicy: corev1.PullIfNotPresent,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
					PeriodSeconds: 1},
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			}},
		},
	}
	if inject {
		p.Annotations = map[string]string{"keyshift.io/inject": "true", "keyshift.io/keysets": keysetName, "keyshift.io/kms-env-from": "kms-env"}
	} else {
		// Like for like without the sidecar: the app dials lazily, so it
		// starts and serves /healthz with a socket that is not there.
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "KEYSHIFT_SOCKET", Value: "/tmp/no-sidecar.sock"}}
	}
	return p
}

// sidecarMemory reads each sample sidecar's memory from its container's
// cgroup (v1 here: memory.usage_in_bytes and the RSS in memory.stat).
func (n *node) sidecarMemory(ctx context.Context) {
	n.t.Helper()
	var lines []string
	for _, p := range n.appPods(ctx) {
		for _, cs := range p.Status.InitContainerStatuses {
			if cs.Name != "keyshift" {
				continue
			}
			id := strings.TrimPrefix(cs.ContainerID, "containerd://")
			dirs, _ := filepath.Glob("/sys/fs/cgroup/memory/kubepods*/*/pod" + string(p.UID) + "/" + id)
			dirs2, _ := filepath.Glob("/sys/fs/cgroup/memory/kubepods*/pod" + string(p.UID) + "/" + id)
			dirs = append(dirs, dirs2...)
			if len(dirs) == 0 {
				n.t.Fatalf("pod %s: no memory cgroup for container %s", p.Name, id)
			}
			usage := readInt(filepath.Join(dirs[0], "memory.usage_in_bytes"))
			rss := statField(filepath.Join(dirs[0], "memory.stat"), "total_rss")
			lines = append(lines, fmt.Sprintf("%s: usage %.1f MiB, rss %.1f MiB", p.Name, float64(usage)/(1<<20), float64(rss)/(1<<20)))
		}
	}
	n.t.Logf("FIGURE sidecar memory from its container cgroup: %s", strings.Join(lines, "; "))
}

func readInt(path string) int64 {
	data, _ := os.ReadFile(path)
	var v int64
	fmt.Sscan(strings.TrimSpace(string(data)), &v)
	return v
}

func statField(path, field string) int64 {
	data, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == field {
			var x int64
			fmt.Sscan(v, &x)
			return x
		}
	}
	return 0
}

// secretFileLatest reads the keyset file the kubelet wrote into pod p's
// Secret volume (on this node, under the kubelet's root directory).
func secretFileLatest(p corev1.Pod) (uint32, error) {
	paths, _ := filepath.Glob(filepath.Join(clusterDir, "kubelet", "pods", string(p.UID), "volumes", "kubernetes.io~secret", "*", "keyset.json"))
	if len(paths) == 0 {
		return 0, fmt.Errorf("no keyset.json in pod %s's Secret volumes", p.Name)
	}
	data, err := os.ReadFile(paths[0])
	if err != nil {
		return 0, err
	}
	ks, err := keyset.Parse(data)
	if err != nil {
		return 0, err
	}
	return ks.Latest(), nil
}

// putNote seals a note through pod p's app and returns its ID.
func putNote(p corev1.Pod, text string) (string, error) {
	resp, err := httpc.Post("http://"+p.Status.PodIP+":8080/notes?tenant=acme", "text/plain", strings.NewReader(text))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		ID string `json:"id"`
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("POST /notes: %s: %s", resp.Status, body)
	}
	return out.ID, json.Unmarshal(body, &out)
}

func getNote(p corev1.Pod, id string) (string, error) {
	resp, err := httpc.Get("http://" + p.Status.PodIP + ":8080/notes/" + id + "?tenant=acme")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /notes/%s: %s: %s", id, resp.Status, body)
	}
	return string(body), nil
}

// rotation watches one controller-driven rotation of the sample keyset to
// version next, printing a timeline, until every pod encrypts with it.
type rotationWatch struct {
	next                  uint32
	start                 time.Time
	pendingAt, promotedAt time.Time
	xdsAt, fileAt, encAt  map[string]time.Time
	lastEnc               time.Time
}

func (n *node) watchRotation(ctx context.Context, next uint32, timeout time.Duration, during func(r *rotationWatch)) *rotationWatch {
	n.t.Helper()
	r := &rotationWatch{next: next, start: time.Now(), xdsAt: map[string]time.Time{}, fileAt: map[string]time.Time{}, encAt: map[string]time.Time{}}
	n.eventually(fmt.Sprintf("v%d promoted and used by every pod", next), timeout, func() (bool, string) {
		now := time.Now()
		ks := n.doc(ctx)
		if r.pendingAt.IsZero() && ks.Latest() >= next {
			r.pendingAt = now
			n.logf("controller: v%d generated, verified and added as pending", next)
		}
		if r.promotedAt.IsZero() && ks.Primary().Version >= next {
			r.promotedAt = now
			n.logf("controller: v%d promoted to primary (%.1fs after pending)", next, now.Sub(r.pendingAt).Seconds())
		}
		pods := n.appPods(ctx)
		for _, p := range pods {
			if _, ok := r.xdsAt[p.Name]; !ok {
				if latest, _, src, err := loaded(p); err == nil && latest >= next {
					r.xdsAt[p.Name] = now
					n.logf("pod %s: sidecar holds v%d (loaded from %s)", p.Name, next, src)
				}
			}
			if _, ok := r.fileAt[p.Name]; !ok {
				if latest, err := secretFileLatest(p); err == nil && latest >= next {
					r.fileAt[p.Name] = now
					n.logf("pod %s: kubelet updated the Secret volume to v%d", p.Name, next)
				}
			}
			if _, ok := r.encAt[p.Name]; !ok {
				if s, err := podStats(p); err == nil && s.ByVersion[fmt.Sprint(next)] > 0 {
					r.encAt[p.Name] = now
					r.lastEnc = now
					n.logf("pod %s: app encrypting with v%d", p.Name, next)
				}
			}
		}
		if during != nil {
			during(r)
		}
		done := !r.promotedAt.IsZero() && len(r.encAt) >= len(pods) && len(pods) > 0
		return done, fmt.Sprintf("latest v%d primary v%d, %d pods hold it, %d encrypt with it", ks.Latest(), ks.Primary().Version, len(r.xdsAt), len(r.encAt))
	})
	return r
}

func (n *node) rotationUnderTraffic(ctx context.Context) {
	pods := n.appPods(ctx)
	notes := map[string]string{}
	for _, p := range pods {
		id, err := putNote(p, "written before the rotation by "+p.Name)
		if err != nil {
			n.t.Fatal(err)
		}
		notes[p.Name] = id
	}
	tr := n.markTraffic(ctx)
	before := n.doc(ctx)
	next := before.Latest() + 1
	n.logf("traffic flowing; waiting for the controller to rotate %s (primary v%d, period %s)", keysetName, before.Primary().Version, rotationPeriod)
	r := n.watchRotation(ctx, next, rotationPeriod+6*time.Minute, nil)
	for _, p := range pods {
		if r.xdsAt[p.Name].IsZero() || r.fileAt[p.Name].IsZero() {
			n.t.Errorf("pod %s: v%d not seen both over xDS (%v) and in the Secret volume (%v)", p.Name, next, r.xdsAt[p.Name], r.fileAt[p.Name])
		}
		text, err := getNote(p, notes[p.Name])
		if err != nil || !strings.Contains(text, "before the rotation") {
			n.t.Errorf("pod %s: a note sealed under v%d does not open after the rotation: %q %v", p.Name, before.Primary().Version, text, err)
		}
	}
	ok, failed, errs := n.since(ctx, tr)
	n.t.Logf("FIGURE rotation v%d end to end: pending -> promoted %.1fs, pending -> last pod encrypting with it %.1fs; requests %d, failed %d",
		next, r.promotedAt.Sub(r.pendingAt).Seconds(), r.lastEnc.Sub(r.pendingAt).Seconds(), ok, failed)
	if failed != 0 || len(errs) != 0 {
		n.t.Fatalf("%d requests failed during the rotation:\n%s", failed, strings.Join(errs, "\n"))
	}
}

// leader is the controller replica holding the Lease.
func (n *node) leader(ctx context.Context) string {
	n.t.Helper()
	l, err := n.client.CoordinationV1().Leases(systemNS).Get(ctx, "keyshift-controller", metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		n.t.Fatalf("controller Lease: %v", err)
	}
	return *l.Spec.HolderIdentity
}

// promotions counts the controller's Promote Events for version v.
func (n *node) promotions(ctx context.Context, v uint32) int32 {
	n.t.Helper()
	evs, err := n.client.CoreV1().Events(demoNS).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + keysetName})
	if err != nil {
		n.t.Fatal(err)
	}
	var c int32
	for _, e := range evs.Items {
		if e.Reason == "Promote" && strings.Contains(e.Message, fmt.Sprintf("[%d]", v)) {
			c += max(e.Count, 1)
		}
	}
	return c
}

// leaderDeletedMidRotation deletes the leader controller's pod while a
// version is pending: the other replica must finish the rotation, promoting
// exactly once, after every pod holds the version.
func (n *node) leaderDeletedMidRotation(ctx context.Context) {
	tr := n.markTraffic(ctx)
	next := n.doc(ctx).Latest() + 1
	deleted := ""
	r := n.watchRotation(ctx, next, rotationPeriod+6*time.Minute, func(r *rotationWatch) {
		if deleted != "" || r.pendingAt.IsZero() || !r.promotedAt.IsZero() {
			return
		}
		deleted = n.leader(ctx)
		if err := n.client.CoreV1().Pods(systemNS).Delete(ctx, deleted, metav1.DeleteOptions{}); err != nil {
			n.t.Fatal(err)
		}
		n.logf("FAULT leader controller pod %s deleted while v%d is pending", deleted, next)
	})
	if deleted == "" {
		n.t.Fatalf("v%d was promoted before the test could delete the leader", next)
	}
	now := n.leader(ctx)
	if now == deleted {
		n.t.Errorf("the Lease is still held by the deleted pod %s", deleted)
	}
	for p, at := range r.xdsAt {
		if at.After(r.promotedAt) {
			n.t.Errorf("pod %s got v%d at %v, after the promotion at %v", p, next, at, r.promotedAt)
		}
	}
	if c := n.promotions(ctx, next); c != 1 {
		n.t.Errorf("v%d promoted %d times (Events), want exactly once", next, c)
	}
	ok, failed, errs := n.since(ctx, tr)
	n.t.Logf("FIGURE leader deleted mid-rotation: %s finished it; pending -> promoted %.1fs; requests %d, failed %d",
		now, r.promotedAt.Sub(r.pendingAt).Seconds(), ok, failed)
	if failed != 0 {
		n.t.Fatalf("%d requests failed:\n%s", failed, strings.Join(errs, "\n"))
	}
}

func ctrTask(args ...string) *exec.Cmd {
	return exec.Command("ctr", append([]string{"--address", filepath.Join(clusterDir, "containerd", "containerd.sock"), "-n", "k8s.io", "tasks"}, args...)...)
}

// sidecarKilled kills one pod's sidecar container: the kubelet restarts it,
// the app recovers without restarting, and errors fall only inside the window.
func (n *node) sidecarKilled(ctx context.Context) {
	p := n.appPods(ctx)[0]
	var id string
	var restarts int32
	for _, cs := range p.Status.InitContainerStatuses {
		if cs.Name == "keyshift" {
			id, restarts = strings.TrimPrefix(cs.ContainerID, "containerd://"), cs.RestartCount
		}
	}
	appRestarts := p.Status.ContainerStatuses[0].RestartCount
	tr := n.markTraffic(ctx)
	killed := time.Now()
	if out, err := ctrTask("kill", "-s", "SIGKILL", id).CombinedOutput(); err != nil {
		n.t.Fatalf("ctr tasks kill %s: %v\n%s", id, err, out)
	}
	n.logf("FAULT sidecar container of %s killed (SIGKILL)", p.Name)
	var back time.Time
	n.eventually("the kubelet to restart the sidecar", 90*time.Second, func() (bool, string) {
		q, err := n.client.CoreV1().Pods(demoNS).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, cs := range q.Status.InitContainerStatuses {
			if cs.Name == "keyshift" && cs.RestartCount > restarts && cs.Ready {
				back = time.Now()
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", q.Status.InitContainerStatuses)
	})
	n.logf("sidecar of %s restarted by the kubelet and ready after %.1fs", p.Name, back.Sub(killed).Seconds())
	// Let the app show it recovered on its own.
	n.eventually("the app to succeed again", 30*time.Second, func() (bool, string) {
		s, err := podStats(p)
		b := tr.base[p.Name]
		return err == nil && s.OK > b.OK+10, fmt.Sprint(err)
	})
	q, err := n.client.CoreV1().Pods(demoNS).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	if q.Status.ContainerStatuses[0].RestartCount != appRestarts {
		n.t.Errorf("the app container restarted (%d -> %d)", appRestarts, q.Status.ContainerStatuses[0].RestartCount)
	}
	s, _ := podStats(p)
	b := tr.base[p.Name]
	var outside []string
	for _, f := range s.Failures {
		if len(b.Failures) > 0 && !f.At.After(b.Failures[len(b.Failures)-1].At) {
			continue
		}
		if f.At.Before(killed.Add(-time.Second)) || f.At.After(back.Add(2*time.Second)) {
			outside = append(outside, fmt.Sprintf("%s %s: %s", f.At.Format("15:04:05.000"), f.Op, f.Error))
		}
	}
	ok, failed, _ := n.since(ctx, tr)
	n.t.Logf("FIGURE sidecar killed in %s: back in %.1fs; requests %d, failed %d (all in %s: %d), app restarts 0",
		p.Name, back.Sub(killed).Seconds(), ok, failed, p.Name, s.Failed-b.Failed)
	if len(outside) > 0 {
		n.t.Errorf("failures outside the kill window [%s, %s]:\n%s", killed.Format("15:04:05.000"), back.Format("15:04:05.000"), strings.Join(outside, "\n"))
	}
	if failed != s.Failed-b.Failed {
		n.t.Errorf("other pods failed requests too: %d in all, %d in %s", failed, s.Failed-b.Failed, p.Name)
	}
}

// kmsStopped takes the KMS away for 60 s: the sidecars hold their keys in
// memory, so no request fails.
func (n *node) kmsStopped(ctx context.Context) {
	tr := n.markTraffic(ctx)
	n.kubectl("-n", kmsNS, "scale", "deployment/local-kms", "--replicas=0")
	n.eventually("the KMS pod gone", 60*time.Second, func() (bool, string) {
		l, err := n.client.CoreV1().Pods(kmsNS).List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0, fmt.Sprint(err)
	})
	n.logf("FAULT KMS stopped")
	time.Sleep(60 * time.Second)
	n.kubectl("-n", kmsNS, "scale", "deployment/local-kms", "--replicas=1")
	n.kubectl("-n", kmsNS, "rollout", "status", "deployment/local-kms", "--timeout=120s")
	n.logf("KMS back after 60s")
	ok, failed, errs := n.since(ctx, tr)
	n.t.Logf("FIGURE KMS stopped for 60s: requests %d, failed %d", ok, failed)
	if failed != 0 {
		n.t.Fatalf("%d requests failed while the KMS was away:\n%s", failed, strings.Join(errs, "\n"))
	}
}

// injectorDown creates a pod while no injector runs: failurePolicy Fail
// refuses it with the API server's message; once the injector is back, the
// same pod is created, injected.
func (n *node) injectorDown(ctx context.Context) {
	n.kubectl("-n", systemNS, "scale", "deployment/keyshift-injector", "--replicas=0")
	n.eventually("the injector pods gone", 60*time.Second, func() (bool, string) {
		l, err := n.client.CoreV1().Pods(systemNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=keyshift-injector"})
		return err == nil && len(l.Items) == 0, fmt.Sprint(err)
	})
	pod := samplePod(demoNS, "while-injector-down", true)
	_, err := n.client.CoreV1().Pods(demoNS).Create(ctx, pod, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "inject.keyshift.io") {
		n.t.Fatalf("creating an annotated pod with the injector down: got %v, want a refusal naming the webhook", err)
	}
	n.logf("FAULT injector down: pod refused: %v", err)
	n.kubectl("-n", systemNS, "scale", "deployment/keyshift-injector", "--replicas=2")
	n.kubectl("-n", systemNS, "rollout", "status", "deployment/keyshift-injector", "--timeout=120s")
	var created *corev1.Pod
	n.eventually("the pod created once the injector is back", 60*time.Second, func() (bool, string) {
		created, err = n.client.CoreV1().Pods(demoNS).Create(ctx, pod, metav1.CreateOptions{})
		return err == nil, fmt.Sprint(err)
	})
	if len(created.Spec.InitContainers) == 0 || created.Spec.InitContainers[0].Name != "keyshift" {
		n.t.Fatalf("the pod created after the injector came back has no sidecar: %+v", created.Spec.InitContainers)
	}
	n.logf("injector back: the pod was created with its sidecar")
	_ = n.client.CoreV1().Pods(demoNS).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
}

// waitPodReady waits up to 120 s for pod ns/name to be Ready and returns it.
func (n *node) waitPodReady(ctx context.Context, ns, name string) *corev1.Pod {
	n.t.Helper()
	var p *corev1.Pod
	n.eventually("pod "+name+" Ready", 120*time.Second, func() (bool, string) {
		var err error
		p, err = n.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, ""
			}
		}
		return false, string(p.Status.Phase)
	})
	return p
}
