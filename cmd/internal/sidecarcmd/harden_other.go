//go:build !linux

package sidecarcmd

// harden is Linux-only; elsewhere (a developer's laptop) it does nothing.
func harden() error { return nil }
