package selfcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// renewNum/renewDen is the fraction of a certificate's life after which it
// is renewed.
const renewNum, renewDen = 2, 3

// backdate is how far NotBefore is set in the past, for clocks that lag.
const backdate = 5 * time.Minute

// pki is the parsed content of the TLS Secret. It holds private keys, so
// it never prints them.
type pki struct {
	// cas is every CA to trust, oldest first: what ca.crt holds.
	cas []*x509.Certificate
	// signer, the CA whose key is signerKey, signs serving certificates;
	// nil when ca.key matches no CA in cas.
	signer    *x509.Certificate
	signerKey *ecdsa.PrivateKey
	// leaf and leafKey are the serving pair; nil when they do not match.
	leaf    *x509.Certificate
	leafKey *ecdsa.PrivateKey
}

// String keeps the keys out of any print.
func (*pki) String() string { return "REDACTED" }

// LogValue keeps the keys out of any log.
func (*pki) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// parsePKI reads what it can of a Secret's data; anything unusable is left
// out, and renew replaces it.
func parsePKI(data map[string][]byte) *pki {
	p := &pki{}
	for _, c := range parseCerts(data[CABundleKey]) {
		if c.IsCA && c.BasicConstraintsValid {
			p.cas = append(p.cas, c)
		}
	}
	if key, err := parseECKey(data[CAKeyKey]); err == nil {
		for _, c := range p.cas {
			if key.PublicKey.Equal(c.PublicKey) {
				p.signer, p.signerKey = c, key
			}
		}
	}
	if leaves := parseCerts(data[corev1.TLSCertKey]); len(leaves) > 0 {
		if key, err := parseECKey(data[corev1.TLSPrivateKeyKey]); err == nil && key.PublicKey.Equal(leaves[0].PublicKey) {
			p.leaf, p.leafKey = leaves[0], key
		}
	}
	return p
}

// parseCerts is every certificate of a PEM bundle that parses.
func parseCerts(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

func parseECKey(data []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if ec, ok := k.(*ecdsa.PrivateKey); ok {
			return ec, nil
		}
		return nil, errors.New("not an ECDSA key")
	}
	return x509.ParseECPrivateKey(b.Bytes)
}

// data is p as Secret data, on top of base (whose other keys are kept).
func (p *pki) data(base map[string][]byte) (map[string][]byte, error) {
	out := make(map[string][]byte, len(base)+4)
	for k, v := range base {
		out[k] = v
	}
	var bundle []byte
	for _, c := range p.cas {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	caKey, err := x509.MarshalPKCS8PrivateKey(p.signerKey)
	if err != nil {
		return nil, fmt.Errorf("selfcert: encode CA key: %w", err)
	}
	leafKey, err := x509.MarshalPKCS8PrivateKey(p.leafKey)
	if err != nil {
		return nil, fmt.Errorf("selfcert: encode serving key: %w", err)
	}
	out[CABundleKey] = bundle
	out[CAKeyKey] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKey})
	out[corev1.TLSCertKey] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.leaf.Raw})
	out[corev1.TLSPrivateKeyKey] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: leafKey})
	return out, nil
}

// issuedAt undoes the backdating of NotBefore.
func issuedAt(c *x509.Certificate) time.Time { return c.NotBefore.Add(backdate) }

// due reports whether c has lived two thirds of its life.
func due(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(issuedAt(c))
	return !now.Before(issuedAt(c).Add(life / renewDen * renewNum))
}

// renew brings p up to date at now and says what it changed (nothing:
// nil). It drops expired CAs, makes a new CA when there is no usable one or
// the current one is due, and issues a serving certificate when the
// current one is unusable, or due and the CA that would sign it has been
// trusted for CAOverlap (or the certificate would not outlast the wait).
func (c Config) renew(p *pki, now time.Time) ([]string, error) {
	var changes []string
	live := p.cas[:0:0]
	for _, ca := range p.cas {
		if now.Before(ca.NotAfter) {
			live = append(live, ca)
		} else {
			changes = append(changes, "dropped expired CA "+ca.Subject.CommonName)
		}
	}
	p.cas = live
	if p.signer != nil && !now.Before(p.signer.NotAfter) {
		p.signer, p.signerKey = nil, nil
	}
	switch {
	case p.signer == nil:
		changes = append(changes, "new CA")
	case due(p.signer, now):
		changes = append(changes, "new CA (renewal)")
	}
	if p.signer == nil || due(p.signer, now) {
		ca, key, err := c.newCA(now)
		if err != nil {
			return nil, err
		}
		p.cas, p.signer, p.signerKey = append(p.cas, ca), ca, key
	}

	issue := false
	switch {
	case !c.leafUsable(p, now):
		issue = true
		changes = append(changes, "new serving certificate")
	case due(p.leaf, now):
		fromSigner := p.leaf.CheckSignatureFrom(p.signer) == nil
		trusted := now.Sub(issuedAt(p.signer)) >= c.CAOverlap
		expiring := p.leaf.NotAfter.Sub(now) <= c.CAOverlap
		if fromSigner || trusted || expiring {
			issue = true
			changes = append(changes, "serving certificate renewal")
		}
	}
	if issue {
		leaf, key, err := c.newLeaf(p.signer, p.signerKey, now)
		if err != nil {
			return nil, err
		}
		p.leaf, p.leafKey = leaf, key
	}
	return changes, nil
}

// leafUsable reports whether p's serving certificate is live at now,
// carries exactly DNSNames, and chains to a CA in the bundle.
func (c Config) leafUsable(p *pki, now time.Time) bool {
	if p.leaf == nil || now.Before(p.leaf.NotBefore) || !now.Before(p.leaf.NotAfter) {
		return false
	}
	if !slices.Equal(p.leaf.DNSNames, c.DNSNames) {
		return false
	}
	roots := x509.NewCertPool()
	for _, ca := range p.cas {
		roots.AddCert(ca)
	}
	_, err := p.leaf.Verify(x509.VerifyOptions{
		Roots: roots, CurrentTime: now, DNSName: c.DNSNames[0],
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err == nil
}

func (c Config) newCA(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("selfcert: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		// A distinct name per CA, so two in one bundle are told apart.
		Subject:               pkix.Name{CommonName: c.Owner + "-ca@" + strconv.FormatInt(now.Unix(), 10)},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(c.CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("selfcert: create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("selfcert: parse CA: %w", err)
	}
	return cert, key, nil
}

// newLeaf issues a serving certificate for DNSNames; it never outlives its
// CA.
func (c Config) newLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("selfcert: serving key: %w", err)
	}
	notAfter := now.Add(c.CertValidity)
	if ca.NotAfter.Before(notAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: c.DNSNames[0]},
		DNSNames:     c.DNSNames,
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("selfcert: issue serving certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("selfcert: parse serving certificate: %w", err)
	}
	return cert, key, nil
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("selfcert: reading randomness: %v", err)) // crypto/rand never fails on Linux
	}
	return n
}
