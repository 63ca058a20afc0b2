package injector_test

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyshift/keyshift/internal/injector"
)

// An app team writes two annotations; Inject adds the native sidecar, the
// socket volume and KEYSHIFT_SOCKET.
func ExampleInject() {
	uid := int64(1000)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "shop-0", Annotations: map[string]string{
			"keyshift.io/inject":  "true",
			"keyshift.io/keysets": "payments",
		}},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: &uid},
			Containers:      []corev1.Container{{Name: "app", Image: "example.com/shop:1"}},
		},
	}
	out, err := injector.Inject(pod, injector.Config{Image: "keyshift/keyshift:v0.1.0"})
	if err != nil {
		fmt.Println(err)
		return
	}
	sc := out.Spec.InitContainers[0]
	fmt.Println(sc.Name, *sc.RestartPolicy, sc.Command)
	for _, a := range sc.Args {
		fmt.Println(" ", a)
	}
	fmt.Println(out.Spec.Containers[0].Env[0].Name, "=", out.Spec.Containers[0].Env[0].Value)
	// Output:
	// keyshift Always [/keyshift-sidecar]
	//   --socket=/var/run/keyshift/keyshift.sock
	//   --socket-mode=0666
	//   --allowed-uids=1000,65532
	//   --metrics-addr=:9495
	//   --log-level=info
	//   --log-format=json
	//   --keyset=payments=/var/run/keyshift/keysets/payments/keyset.json
	// KEYSHIFT_SOCKET = /var/run/keyshift/keyshift.sock
}
