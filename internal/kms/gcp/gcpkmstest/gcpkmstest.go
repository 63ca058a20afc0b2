// Package gcpkmstest is an in-process Google Cloud KMS server for tests: the
// generated KeyManagementService gRPC server, over a real TCP listener on
// loopback, so the real cloud.google.com/go/kms client talks to it exactly
// as it talks to Cloud KMS (no emulator of Cloud KMS exists).
//
// It keeps CryptoKeys and their versions in memory, one random AES-256-GCM
// key per version, and follows the real service where keyshift depends on
// it: Encrypt uses the primary version (or a named one) and reports it,
// binds additional authenticated data, checks the request's CRC32C
// checksums (InvalidArgument on a mismatch, as Cloud KMS does) and reports
// the verified_* flags and ciphertext_crc32c; Decrypt finds the version from
// the ciphertext and reports plaintext_crc32c; a version that is not
// ENABLED fails with FailedPrecondition; new versions are not primary until
// UpdateCryptoKeyPrimaryVersion. It records every call with its request, and
// injects faults: failed calls with a given code, damaged answers, latency,
// slow key generation, and a stop and restart on the same address.
//
// It implements GetCryptoKey, GetCryptoKeyVersion, CreateCryptoKey,
// CreateCryptoKeyVersion, UpdateCryptoKeyPrimaryVersion,
// UpdateCryptoKeyVersion (state only), DestroyCryptoKeyVersion, Encrypt and
// Decrypt; other methods answer Unimplemented. It has no IAM: an unknown key
// answers PermissionDenied to Encrypt and Decrypt ("or it may not exist", as
// Cloud KMS says) and NotFound elsewhere. Key rings need not be created.
package gcpkmstest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Limits of the real service for software keys.
const (
	maxPlaintext = 64 << 10
	maxAAD       = 64 << 10
)

// Damage names a way to damage the next answer, as corruption in transit
// would, to test that a client checks the CRC32C fields.
type Damage int

const (
	// DamageCiphertext flips a bit of Encrypt's ciphertext after its
	// ciphertext_crc32c was computed.
	DamageCiphertext Damage = iota + 1
	// DamagePlaintext flips a bit of Decrypt's plaintext after its
	// plaintext_crc32c was computed.
	DamagePlaintext
	// UnverifiedPlaintext answers Encrypt with verified_plaintext_crc32c false.
	UnverifiedPlaintext
	// UnverifiedAAD answers Encrypt with
	// verified_additional_authenticated_data_crc32c false.
	UnverifiedAAD
)

// method is the one method a Damage applies to.
func (d Damage) method() string {
	if d == DamagePlaintext {
		return "Decrypt"
	}
	return "Encrypt"
}

// Call is one call the server received.
type Call struct {
	// Method is the KeyManagementService method, such as "Encrypt".
	Method string
	// Request is a copy of the request as received.
	Request proto.Message
	// Code is the status the server answered with (codes.OK on success).
	Code codes.Code
	// At is when the call arrived.
	At time.Time
}

// Server is a Cloud KMS KeyManagementService on a loopback TCP port. Its
// methods are safe for concurrent use.
type Server struct {
	kmspb.UnimplementedKeyManagementServiceServer

	mu         sync.Mutex
	addr       string
	srv        *grpc.Server
	served     sync.WaitGroup
	keys       map[string]*cryptoKey
	calls      []Call
	failures   []*failure
	damages    []*damage
	latency    time.Duration
	generation time.Duration
}

type cryptoKey struct {
	name     string
	primary  int // version number, 0 for none
	versions []*version
	created  time.Time
}

type version struct {
	n       int
	state   kmspb.CryptoKeyVersion_CryptoKeyVersionState
	aead    cipher.AEAD
	created time.Time
	readyAt time.Time
}

type failure struct {
	left    int
	code    codes.Code
	methods []string
}

type damage struct {
	left int
	kind Damage
}

// Start starts a server on 127.0.0.1 and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("gcpkmstest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Listen starts a server on addr (host:port; port 0 picks one). Stop it when done.
func Listen(addr string) (*Server, error) {
	s := &Server{keys: map[string]*cryptoKey{}}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("gcpkmstest: listen: %w", err)
	}
	s.addr = lis.Addr().String()
	s.serve(lis)
	return s, nil
}

func (s *Server) serve(lis net.Listener) {
	g := grpc.NewServer(grpc.UnaryInterceptor(s.intercept))
	kmspb.RegisterKeyManagementServiceServer(g, s)
	s.srv = g
	s.served.Go(func() { _ = g.Serve(lis) })
}

// Addr is the server's host:port, for the client's endpoint option.
func (s *Server) Addr() string { return s.addr }

// Stop closes the listener and every connection at once, as a crash would.
// Keys and recorded calls survive for Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	g := s.srv
	s.srv = nil
	s.mu.Unlock()
	if g != nil {
		g.Stop()
		s.served.Wait()
	}
}

// Restart listens again on the same address after Stop, with the same keys.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("gcpkmstest: restart: server is running")
	}
	lis, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("gcpkmstest: restart: %w", err)
	}
	s.serve(lis)
	return nil
}

// CreateKey creates the CryptoKey name
// (projects/P/locations/L/keyRings/R/cryptoKeys/K), purpose ENCRYPT_DECRYPT,
// with version 1 enabled and primary.
func (s *Server) CreateKey(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.createKey(name, false)
	return err
}

// FailNext makes the next n calls of the given methods (of any method if
// none is given) fail with code before they take effect, as Cloud KMS does
// when it throttles (codes.ResourceExhausted) or is unavailable.
func (s *Server) FailNext(n int, code codes.Code, methods ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, &failure{left: n, code: code, methods: methods})
}

// DamageNext damages the next n successful answers of the method d applies to.
func (s *Server) DamageNext(n int, d Damage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.damages = append(s.damages, &damage{left: n, kind: d})
}

// SetLatency delays every answer by d (0 for none); a client that gives up
// first sees its own deadline.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetGenerationDelay makes versions created from now on stay
// PENDING_GENERATION for d, as HSM and external keys do.
func (s *Server) SetGenerationDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.generation = d
}

// Calls returns the calls received so far, in order of arrival.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// Methods returns the method of each call received so far, in order.
func (s *Server) Methods() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make([]string, len(s.calls))
	for i, c := range s.calls {
		m[i] = c.Method
	}
	return m
}

// ResetCalls forgets the calls received so far.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

// intercept records each call and applies the faults.
func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := path.Base(info.FullMethod)
	s.mu.Lock()
	idx := len(s.calls)
	s.calls = append(s.calls, Call{Method: method, Request: proto.Clone(req.(proto.Message)), At: time.Now()})
	fail := s.takeFailure(method)
	latency := s.latency
	s.mu.Unlock()

	resp, err := func() (any, error) {
		if latency > 0 {
			t := time.NewTimer(latency)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, status.FromContextError(ctx.Err()).Err()
			case <-t.C:
			}
		}
		if fail != nil {
			return nil, fail
		}
		return handler(ctx, req)
	}()

	s.mu.Lock()
	if err == nil {
		if d := s.takeDamage(method); d != 0 {
			applyDamage(resp, d)
		}
	}
	if idx < len(s.calls) { // ResetCalls may have run meanwhile
		s.calls[idx].Code = status.Code(err)
	}
	s.mu.Unlock()
	return resp, err
}

func (s *Server) takeFailure(method string) error {
	for _, f := range s.failures {
		if f.left > 0 && (len(f.methods) == 0 || slices.Contains(f.methods, method)) {
			f.left--
			return status.Error(f.code, failureMessage(f.code))
		}
	}
	return nil
}

func failureMessage(code codes.Code) string {
	switch code {
	case codes.ResourceExhausted:
		return "Quota exceeded for quota metric 'Cryptographic requests' and limit 'Cryptographic requests per minute per region'."
	case codes.Unavailable:
		return "The service is currently unavailable."
	case codes.Internal:
		return "Internal error encountered."
	case codes.DeadlineExceeded:
		return "Deadline exceeded."
	}
	return "Injected failure."
}

func (s *Server) takeDamage(method string) Damage {
	for _, d := range s.damages {
		if d.left > 0 && d.kind.method() == method {
			d.left--
			return d.kind
		}
	}
	return 0
}

func applyDamage(resp any, d Damage) {
	switch r := resp.(type) {
	case *kmspb.EncryptResponse:
		switch d {
		case DamageCiphertext:
			if len(r.Ciphertext) > 0 {
				r.Ciphertext[len(r.Ciphertext)/2] ^= 0x01
			}
		case UnverifiedPlaintext:
			r.VerifiedPlaintextCrc32C = false
		case UnverifiedAAD:
			r.VerifiedAdditionalAuthenticatedDataCrc32C = false
		}
	case *kmspb.DecryptResponse:
		if d == DamagePlaintext && len(r.Plaintext) > 0 {
			r.Plaintext[0] ^= 0x01
		}
	}
}

// createKey adds a key; s.mu is held.
func (s *Server) createKey(name string, skipVersion bool) (*cryptoKey, error) {
	if !validKeyName(name) {
		return nil, status.Errorf(codes.InvalidArgument, "Resource name [%s] does not match any known pattern.", name)
	}
	if _, ok := s.keys[name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "CryptoKey %s already exists.", name)
	}
	k := &cryptoKey{name: name, created: time.Now()}
	if !skipVersion {
		v, err := s.addVersion(k)
		if err != nil {
			return nil, err
		}
		k.primary = v.n
	}
	s.keys[name] = k
	return k, nil
}

func (s *Server) addVersion(k *cryptoKey) (*version, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, status.Errorf(codes.Internal, "key generation: %v", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "key generation: %v", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "key generation: %v", err)
	}
	now := time.Now()
	v := &version{n: len(k.versions) + 1, state: kmspb.CryptoKeyVersion_ENABLED, aead: aead, created: now, readyAt: now.Add(s.generation)}
	k.versions = append(k.versions, v)
	return v, nil
}

func validKeyName(name string) bool {
	p := strings.Split(name, "/")
	if len(p) != 8 || p[0] != "projects" || p[2] != "locations" || p[4] != "keyRings" || p[6] != "cryptoKeys" {
		return false
	}
	for _, id := range []string{p[1], p[3], p[5], p[7]} {
		if id == "" {
			return false
		}
	}
	return true
}

func (v *version) currentState() kmspb.CryptoKeyVersion_CryptoKeyVersionState {
	if v.state == kmspb.CryptoKeyVersion_ENABLED && time.Now().Before(v.readyAt) {
		return kmspb.CryptoKeyVersion_PENDING_GENERATION
	}
	return v.state
}

func (k *cryptoKey) versionName(n int) string {
	return k.name + "/cryptoKeyVersions/" + strconv.Itoa(n)
}

func (k *cryptoKey) version(n int) *version {
	if n < 1 || n > len(k.versions) {
		return nil
	}
	return k.versions[n-1]
}

func (k *cryptoKey) versionProto(v *version) *kmspb.CryptoKeyVersion {
	return &kmspb.CryptoKeyVersion{
		Name:            k.versionName(v.n),
		State:           v.currentState(),
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
		Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		CreateTime:      timestamppb.New(v.created),
		GenerateTime:    timestamppb.New(v.readyAt),
	}
}

func (k *cryptoKey) proto() *kmspb.CryptoKey {
	ck := &kmspb.CryptoKey{
		Name:       k.name,
		Purpose:    kmspb.CryptoKey_ENCRYPT_DECRYPT,
		CreateTime: timestamppb.New(k.created),
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
			ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
			Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		},
	}
	if v := k.version(k.primary); v != nil {
		ck.Primary = k.versionProto(v)
	}
	return ck
}

// lookupVersion finds a version by its full name; s.mu is held.
func (s *Server) lookupVersion(name string) (*cryptoKey, *version, error) {
	keyName, id, ok := strings.Cut(name, "/cryptoKeyVersions/")
	k := s.keys[keyName]
	n, err := strconv.Atoi(id)
	if !ok || k == nil || err != nil || k.version(n) == nil {
		return nil, nil, status.Errorf(codes.NotFound, "CryptoKeyVersion %s not found.", name)
	}
	return k, k.version(n), nil
}

func notEnabled(k *cryptoKey, v *version) error {
	return status.Errorf(codes.FailedPrecondition, "%s is not enabled, current state is: %s.", k.versionName(v.n), v.currentState())
}

func denied(permission, name string) error {
	return status.Errorf(codes.PermissionDenied, "Permission '%s' denied on resource '%s' (or it may not exist).", permission, name)
}

func checksum(field, data string, b []byte, want *wrapperspb.Int64Value) error {
	if want != nil && want.GetValue() != crc32c(b) {
		return status.Errorf(codes.InvalidArgument, "The checksum in field %s did not match the data in field %s.", field, data)
	}
	return nil
}

func crc32c(b []byte) int64 { return int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))) }

// GetCryptoKey returns a key with its primary version.
func (s *Server) GetCryptoKey(_ context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[req.GetName()]
	if k == nil {
		return nil, status.Errorf(codes.NotFound, "CryptoKey %s not found.", req.GetName())
	}
	return k.proto(), nil
}

// GetCryptoKeyVersion returns a version.
func (s *Server) GetCryptoKeyVersion(_ context.Context, req *kmspb.GetCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, v, err := s.lookupVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	return k.versionProto(v), nil
}

// CreateCryptoKey creates a symmetric ENCRYPT_DECRYPT key with version 1
// primary, unless skip_initial_version_creation.
func (s *Server) CreateCryptoKey(_ context.Context, req *kmspb.CreateCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	if p := req.GetCryptoKey().GetPurpose(); p != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return nil, status.Errorf(codes.InvalidArgument, "gcpkmstest supports purpose ENCRYPT_DECRYPT only, not %s.", p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.createKey(req.GetParent()+"/cryptoKeys/"+req.GetCryptoKeyId(), req.GetSkipInitialVersionCreation())
	if err != nil {
		return nil, err
	}
	return k.proto(), nil
}

// CreateCryptoKeyVersion adds an enabled version that is not primary.
func (s *Server) CreateCryptoKeyVersion(_ context.Context, req *kmspb.CreateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[req.GetParent()]
	if k == nil {
		return nil, status.Errorf(codes.NotFound, "CryptoKey %s not found.", req.GetParent())
	}
	v, err := s.addVersion(k)
	if err != nil {
		return nil, err
	}
	return k.versionProto(v), nil
}

// UpdateCryptoKeyPrimaryVersion makes an enabled version primary.
func (s *Server) UpdateCryptoKeyPrimaryVersion(_ context.Context, req *kmspb.UpdateCryptoKeyPrimaryVersionRequest) (*kmspb.CryptoKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[req.GetName()]
	if k == nil {
		return nil, status.Errorf(codes.NotFound, "CryptoKey %s not found.", req.GetName())
	}
	k, v, err := s.lookupVersion(k.name + "/cryptoKeyVersions/" + req.GetCryptoKeyVersionId())
	if err != nil {
		return nil, err
	}
	if v.currentState() != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(k, v)
	}
	k.primary = v.n
	return k.proto(), nil
}

// UpdateCryptoKeyVersion enables or disables a version; update_mask must
// be "state".
func (s *Server) UpdateCryptoKeyVersion(_ context.Context, req *kmspb.UpdateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	if paths := req.GetUpdateMask().GetPaths(); len(paths) != 1 || paths[0] != "state" {
		return nil, status.Errorf(codes.InvalidArgument, "gcpkmstest updates the state field only; update_mask is %v.", paths)
	}
	want := req.GetCryptoKeyVersion().GetState()
	if want != kmspb.CryptoKeyVersion_ENABLED && want != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.InvalidArgument, "The state may only be set to ENABLED or DISABLED, not %s.", want)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, v, err := s.lookupVersion(req.GetCryptoKeyVersion().GetName())
	if err != nil {
		return nil, err
	}
	if st := v.currentState(); st != kmspb.CryptoKeyVersion_ENABLED && st != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "%s cannot be updated in state %s.", k.versionName(v.n), st)
	}
	v.state = want
	return k.versionProto(v), nil
}

// DestroyCryptoKeyVersion schedules a version for destruction; it cannot
// be used from then on.
func (s *Server) DestroyCryptoKeyVersion(_ context.Context, req *kmspb.DestroyCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, v, err := s.lookupVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	if st := v.currentState(); st != kmspb.CryptoKeyVersion_ENABLED && st != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "%s cannot be destroyed in state %s.", k.versionName(v.n), st)
	}
	v.state = kmspb.CryptoKeyVersion_DESTROY_SCHEDULED
	return k.versionProto(v), nil
}

// Encrypt encrypts with the key's primary version, or the version named.
// The ciphertext is version (4 bytes, big-endian) || nonce (12) ||
// AES-256-GCM(plaintext, aad).
func (s *Server) Encrypt(_ context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	if err := checksum("plaintext_crc32c", "plaintext", req.GetPlaintext(), req.GetPlaintextCrc32C()); err != nil {
		return nil, err
	}
	if err := checksum("additional_authenticated_data_crc32c", "additional_authenticated_data", req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C()); err != nil {
		return nil, err
	}
	if n := len(req.GetPlaintext()); n == 0 || n > maxPlaintext {
		return nil, status.Errorf(codes.InvalidArgument, "The plaintext must be 1 to %d bytes, not %d.", maxPlaintext, n)
	}
	if n := len(req.GetAdditionalAuthenticatedData()); n > maxAAD {
		return nil, status.Errorf(codes.InvalidArgument, "The additional authenticated data must be at most %d bytes, not %d.", maxAAD, n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var k *cryptoKey
	var v *version
	if k = s.keys[req.GetName()]; k != nil {
		if v = k.version(k.primary); v == nil {
			return nil, status.Errorf(codes.FailedPrecondition, "%s has no primary version.", k.name)
		}
	} else {
		var err error
		if k, v, err = s.lookupVersion(req.GetName()); err != nil {
			return nil, denied("cloudkms.cryptoKeyVersions.useToEncrypt", req.GetName())
		}
	}
	if v.currentState() != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(k, v)
	}
	out := make([]byte, 4+12, 4+12+len(req.GetPlaintext())+16)
	binary.BigEndian.PutUint32(out, uint32(v.n))
	if _, err := rand.Read(out[4:]); err != nil {
		return nil, status.Errorf(codes.Internal, "nonce: %v", err)
	}
	out = v.aead.Seal(out, out[4:16], req.GetPlaintext(), req.GetAdditionalAuthenticatedData())
	return &kmspb.EncryptResponse{
		Name:                    k.versionName(v.n),
		Ciphertext:              out,
		CiphertextCrc32C:        wrapperspb.Int64(crc32c(out)),
		VerifiedPlaintextCrc32C: req.GetPlaintextCrc32C() != nil,
		VerifiedAdditionalAuthenticatedDataCrc32C: req.GetAdditionalAuthenticatedDataCrc32C() != nil,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}, nil
}

// Decrypt decrypts with the version the ciphertext names.
func (s *Server) Decrypt(_ context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	if err := checksum("ciphertext_crc32c", "ciphertext", req.GetCiphertext(), req.GetCiphertextCrc32C()); err != nil {
		return nil, err
	}
	if err := checksum("additional_authenticated_data_crc32c", "additional_authenticated_data", req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C()); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[req.GetName()]
	if k == nil {
		return nil, denied("cloudkms.cryptoKeyVersions.useToDecrypt", req.GetName())
	}
	invalid := status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid.")
	ct := req.GetCiphertext()
	if len(ct) < 4+12+16 {
		return nil, invalid
	}
	v := k.version(int(binary.BigEndian.Uint32(ct)))
	if v == nil {
		return nil, invalid
	}
	if v.currentState() != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(k, v)
	}
	pt, err := v.aead.Open(nil, ct[4:16], ct[16:], req.GetAdditionalAuthenticatedData())
	if err != nil {
		return nil, invalid
	}
	return &kmspb.DecryptResponse{
		Plaintext:       pt,
		PlaintextCrc32C: wrapperspb.Int64(crc32c(pt)),
		UsedPrimary:     v.n == k.primary,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}, nil
}
