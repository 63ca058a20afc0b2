// Package archtest holds the test that keeps keyshift's package map true
// (docs/ARCHITECTURE.md): imports point down, from cmd to the assemblies
// to the three products to the libraries, products do not import each
// other, and only the packages apps import are outside internal/.
package archtest
