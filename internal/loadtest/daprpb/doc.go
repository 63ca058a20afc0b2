// Package daprpb is generated code for the two calls of Dapr's sidecar API
// that keyshift's load tool measures: dapr.proto.runtime.v1.Dapr's
// EncryptAlpha1 and DecryptAlpha1 streams. dapr.proto and common.proto are
// trimmed copies of Dapr v1.14.0's dapr/proto/runtime/v1/dapr.proto and
// dapr/proto/common/v1/common.proto (same proto packages, names and field
// numbers), so keyshift speaks Dapr's real protocol without depending on
// github.com/dapr/dapr or its SDK.
//
// Regenerating needs protoc (apt-get install -y protobuf-compiler) and the
// plugins `make tools` installs into $HOME/.cache/keyshift/bin.
package daprpb

//go:generate protoc -I .. --plugin=protoc-gen-go=$HOME/.cache/keyshift/bin/protoc-gen-go --plugin=protoc-gen-go-grpc=$HOME/.cache/keyshift/bin/protoc-gen-go-grpc --go_out=.. --go_opt=paths=source_relative --go-grpc_out=.. --go-grpc_opt=paths=source_relative daprpb/common.proto daprpb/dapr.proto
