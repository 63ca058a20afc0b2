package sidecar

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzHTTPAPI sends arbitrary bodies to every HTTP/JSON endpoint of a real
// sidecar's handler. Whatever comes in, the answer is a JSON body with a
// client-error or success status: never a panic, never a 500.
func FuzzHTTPAPI(f *testing.F) {
	e := newEnv(f)
	api := httpAPI(&grpcAPI{svc: e.srv.Service(), lastErr: e.srv.lastError}, nil, e.srv.metrics)
	paths := []string{"/v1/encrypt", "/v1/decrypt", "/v1/rewrap", "/v1/batch/encrypt", "/v1/batch/decrypt", "/v1/batch/rewrap", "/v1/status", "/nope"}
	f.Add(uint8(0), []byte(`{"plaintext":"aGVsbG8=","context":{"a":"b"}}`))
	f.Add(uint8(1), []byte(`{"ciphertext":"AQhwYXltZW50cw=="}`))
	f.Add(uint8(3), []byte(`{"items":[{"plaintext":"","keyset":"payments"},{"keyset":"x"}]}`))
	f.Add(uint8(4), []byte(`{"items":[{"ciphertext":"////"}]}`))
	f.Add(uint8(2), []byte(`{"ciphertext":null,"context":{"":""}}`))
	f.Add(uint8(6), []byte{})
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := paths[int(which)%len(paths)]
		method := http.MethodPost
		if path == "/v1/status" {
			method = http.MethodGet
		}
		req := httptest.NewRequest(method, "http://keyshift"+path, bytes.NewReader(body))
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 404:
		default:
			t.Fatalf("%s %q: status %d %s", path, body, rec.Code, rec.Body.String())
		}
		if !json.Valid(rec.Body.Bytes()) || !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
			t.Fatalf("%s: body is not JSON: %q", path, rec.Body.String())
		}
	})
}
