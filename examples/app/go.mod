module example.com/keyshift-notes

go 1.26.8

require (
	github.com/keyshift/keyshift v0.0.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261012220534-4341edf3f941 // indirect
)

// The app builds against the keyshift in this repository; a real app drops
// this line and requires a released version.
replace github.com/keyshift/keyshift => ../..
