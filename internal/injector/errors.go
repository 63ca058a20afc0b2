package injector

import (
	"errors"
	"fmt"
)

// ErrDenied is the root of every reason a pod is refused: a bad annotation
// (*AnnotationError) or a clash with what the pod already has
// (*ConflictError). The admission handler turns it into a denial with the
// error's message; any other error from Inject is the injector's own fault.
var ErrDenied = errors.New("pod denied")

// ErrConfig means the injector's own Config is unusable; it is a start-up
// error, never a pod's fault.
var ErrConfig = errors.New("injector: invalid config")

// AnnotationError is a pod annotation whose value cannot be used. Its
// message names the annotation, the value, what is wrong and what to write
// instead, because it is what the person applying the pod reads.
type AnnotationError struct {
	// Key is the annotation, for example keyshift.io/keysets.
	Key string
	// Value is what the pod carried.
	Value string
	// Problem says what is wrong with Value.
	Problem string
	// Want says what to write instead.
	Want string
}

// Error is the denial message: the annotation, its value, the problem and
// what to write instead.
func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s=%q: %s; write %s", e.Key, e.Value, e.Problem, e.Want)
}

// Unwrap makes errors.Is(err, ErrDenied) true.
func (e *AnnotationError) Unwrap() error { return ErrDenied }

// ConflictError is something the pod already has that the sidecar needs: a
// container or volume of the same name, a mount at the socket directory, a
// port. Fix says how to resolve it.
type ConflictError struct {
	// What names the clash.
	What string
	// Fix says what to change.
	Fix string
}

// Error is the denial message: the clash and how to resolve it.
func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s; %s", e.What, e.Fix)
}

// Unwrap makes errors.Is(err, ErrDenied) true.
func (e *ConflictError) Unwrap() error { return ErrDenied }
