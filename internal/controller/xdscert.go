package controller

import (
	"context"
	"crypto/tls"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/internal/selfcert"
)

// startXDSCert makes the controller the CA of its xDS server, as the
// injector is of its webhook: a CA and serving certificate for the xDS
// Service in Secret secret of namespace ns (replicas race safely, renewal
// at two thirds of life with CA overlap), the CA bundle handed to publish
// after every check. It returns the tls.Config hook serving the current
// certificate.
func startXDSCert(ctx context.Context, client kubernetes.Interface, ns, secret, service string, log *slog.Logger,
	publish func(context.Context, []byte) error) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	cert, err := selfcert.Start(ctx, selfcert.Config{
		Secrets:    client.CoreV1().Secrets(ns),
		Namespace:  ns,
		SecretName: secret,
		DNSNames:   []string{service + "." + ns + ".svc", service + "." + ns + ".svc.cluster.local"},
		Owner:      "keyshift-controller",
		PublishCA:  publish,
		Flags:      selfcert.Flags{Namespace: "POD_NAMESPACE from the downward API", SecretName: "--xds-tls-secret"},
	}, 30*time.Second, log)
	if err != nil {
		return nil, err
	}
	go cert.Run(ctx)
	return cert.GetCertificate, nil
}
