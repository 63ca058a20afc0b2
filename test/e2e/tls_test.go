//go:build e2e

package e2e

import (
	"crypto/tls"
	"strings"
)

// servedSerial is the serial of the certificate the injector presents now.
func servedSerial(inj *runningInjector) (string, error) {
	c, err := tls.Dial("tcp", strings.TrimPrefix(inj.srvAddr, "https://"), &tls.Config{RootCAs: inj.ca.Pool()})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}
