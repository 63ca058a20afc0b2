package sidecar

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keyshift/keyshift/internal/socket"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// MaxHTTPBody bounds an HTTP/JSON request: a 4 MiB plaintext is about
// 5.4 MiB in base64.
const MaxHTTPBody = 8 << 20

// httpAPI serves the Crypto API as HTTP/JSON on the Unix socket, for curl
// and languages without gRPC. Bodies are the protobuf messages in their
// canonical JSON form (bytes as base64). Errors are
// {"code": "InvalidArgument", "message": "..."} with a matching HTTP status.
func httpAPI(api v1.CryptoServer, allow socket.Allowlist, m *Metrics) http.Handler {
	mux := http.NewServeMux()
	route(mux, "/v1/encrypt", api.Encrypt)
	route(mux, "/v1/decrypt", api.Decrypt)
	route(mux, "/v1/rewrap", api.Rewrap)
	route(mux, "/v1/batch/encrypt", api.EncryptBatch)
	route(mux, "/v1/batch/decrypt", api.DecryptBatch)
	route(mux, "/v1/batch/rewrap", api.RewrapBatch)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		resp, err := api.Status(r.Context(), &v1.StatusRequest{})
		if err != nil {
			writeHTTPError(w, status.Convert(err))
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeHTTPError(w, status.New(codes.NotFound, "no such endpoint: "+r.Method+" "+r.URL.Path+" (see POST /v1/encrypt, /v1/decrypt, /v1/rewrap, /v1/batch/{encrypt,decrypt,rewrap}, GET /v1/status)"))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := socket.FromContext(r.Context())
		if !allow.Allows(p.UID) {
			m.PeerRejected("http")
			writeHTTPError(w, status.New(codes.PermissionDenied, deniedMessage(p.UID)))
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// route serves POST path: the body is the request message in protobuf
// JSON, the reply the response message or an error.
func route[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](mux *http.ServeMux, path string, call func(context.Context, PReq) (Resp, error)) {
	mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		req := PReq(new(Req))
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxHTTPBody))
		if err != nil {
			writeHTTPError(w, status.New(codes.InvalidArgument, "request body too large or unreadable"))
			return
		}
		if err := (protojson.UnmarshalOptions{}).Unmarshal(body, req); err != nil {
			writeHTTPError(w, status.New(codes.InvalidArgument, "request is not valid JSON for "+path+": "+err.Error()))
			return
		}
		resp, err := call(r.Context(), req)
		if err != nil {
			writeHTTPError(w, status.Convert(err))
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

func writeJSON(w http.ResponseWriter, code int, m proto.Message) {
	b, err := protojson.Marshal(m)
	if err != nil {
		writeHTTPError(w, status.New(codes.Internal, "encoding response failed"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func writeHTTPError(w http.ResponseWriter, st *status.Status) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus(st.Code()))
	b, _ := json.Marshal(httpError{Code: st.Code().String(), Message: st.Message()})
	_, _ = w.Write(append(b, '\n'))
}

// httpError is the body of every HTTP/JSON error: the gRPC code name
// ("InvalidArgument", "NotFound", ...) and its message.
type httpError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}
