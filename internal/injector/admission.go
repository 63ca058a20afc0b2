package injector

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultMaxRequestBytes bounds an AdmissionReview body. The API server
// caps an object at about 3 MiB; a review wraps one object (CREATE has no
// oldObject), so 4 MiB is generous and still refuses a flood.
const DefaultMaxRequestBytes = 4 << 20

// Admission results, as logged and counted.
const (
	ResultInjected = "injected"
	ResultSkipped  = "skipped"
	ResultDenied   = "denied"
	ResultError    = "error"
	ResultInvalid  = "invalid_request"
)

// Handler serves admission.k8s.io/v1 AdmissionReviews for pods: it decodes
// the pod, calls Inject, and answers with the JSON patch between the two.
// It converts types and nothing more; every decision is Inject's.
type Handler struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	max     int64
}

// NewHandler returns the /mutate handler. cfg is checked once here, so a
// bad flag stops the injector at start-up. log and metrics may be nil.
func NewHandler(cfg Config, log *slog.Logger, metrics *Metrics, maxRequestBytes int64) (*Handler, error) {
	if _, err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if maxRequestBytes <= 0 {
		maxRequestBytes = DefaultMaxRequestBytes
	}
	return &Handler{cfg: cfg, log: log, metrics: metrics, max: maxRequestBytes}, nil
}

// ServeHTTP answers one AdmissionReview. A request that is not a
// well-formed AdmissionReview gets a 4xx status and a plain-text reason,
// never a panic or a review; a pod the injector refuses gets a 200 review
// with allowed=false and the reason for the person applying it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.fail(w, start, http.StatusMethodNotAllowed, "use POST with an AdmissionReview")
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		h.fail(w, start, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.max))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.fail(w, start, http.StatusRequestEntityTooLarge, fmt.Sprintf("AdmissionReview larger than %d bytes", h.max))
			return
		}
		h.fail(w, start, http.StatusBadRequest, "reading the request body failed")
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		h.fail(w, start, http.StatusBadRequest, "malformed AdmissionReview: "+err.Error())
		return
	}
	if problem := checkReview(&review); problem != "" {
		h.fail(w, start, http.StatusBadRequest, problem)
		return
	}

	req := review.Request
	resp, result, pod := h.admit(req)
	resp.UID = req.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		h.fail(w, start, http.StatusInternalServerError, "encoding the AdmissionReview failed")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)

	elapsed := time.Since(start)
	h.metrics.observe(result, elapsed)
	level := slog.LevelInfo
	if result == ResultSkipped {
		level = slog.LevelDebug
	}
	attrs := []slog.Attr{
		slog.String("uid", string(req.UID)), slog.String("namespace", req.Namespace), slog.String("pod", pod),
		slog.String("operation", string(req.Operation)), slog.String("result", result), slog.Duration("duration", elapsed),
	}
	if !resp.Allowed && resp.Result != nil {
		attrs = append(attrs, slog.String("reason", resp.Result.Message))
	}
	h.log.LogAttrs(r.Context(), level, "admission", attrs...)
}

// checkReview returns what makes review unusable, or "".
func checkReview(review *admissionv1.AdmissionReview) string {
	switch {
	case review.APIVersion != admissionv1.SchemeGroupVersion.String() || review.Kind != "AdmissionReview":
		return fmt.Sprintf("want apiVersion %s kind AdmissionReview, got apiVersion %q kind %q",
			admissionv1.SchemeGroupVersion, review.APIVersion, review.Kind)
	case review.Request == nil:
		return "AdmissionReview has no request"
	case review.Request.UID == "":
		return "AdmissionReview request has no uid"
	}
	return ""
}

// admit decides one request. It returns the response (without UID), the
// result for logs and metrics, and the pod's name for logs.
func (h *Handler) admit(req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, string, string) {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Resource.Group != "" || req.Resource.Resource != "pods" || req.SubResource != "" ||
		req.Operation != admissionv1.Create {
		// The webhook configuration only sends pod CREATEs; anything else
		// is let through untouched rather than broken.
		return allow, ResultSkipped, ""
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(http.StatusBadRequest, metav1.StatusReasonBadRequest, "keyshift injector: the request's object is not a Pod: "+err.Error()),
			ResultInvalid, ""
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName
	}
	if pod.Namespace == "" {
		// A pod created by a controller may not carry its namespace yet.
		pod.Namespace = req.Namespace
	}
	patched, err := Inject(&pod, h.cfg)
	switch {
	case errors.Is(err, ErrDenied):
		return deny(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, "keyshift: "+err.Error()), ResultDenied, name
	case err != nil:
		h.log.Error("injection failed", "uid", string(req.UID), "namespace", req.Namespace, "pod", name, "err", err)
		return deny(http.StatusInternalServerError, metav1.StatusReasonInternalError, "keyshift injector: internal error; see the injector's log for uid "+string(req.UID)),
			ResultError, name
	}
	before, err1 := json.Marshal(&pod)
	after, err2 := json.Marshal(patched)
	ops, err3 := Diff(before, after)
	if err := errors.Join(err1, err2, err3); err != nil {
		h.log.Error("computing the patch failed", "uid", string(req.UID), "namespace", req.Namespace, "pod", name, "err", err)
		return deny(http.StatusInternalServerError, metav1.StatusReasonInternalError, "keyshift injector: internal error; see the injector's log for uid "+string(req.UID)),
			ResultError, name
	}
	allow.Warnings = Warnings(&pod, h.cfg)
	if len(ops) == 0 {
		return allow, ResultSkipped, name
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return deny(http.StatusInternalServerError, metav1.StatusReasonInternalError, "keyshift injector: internal error"), ResultError, name
	}
	pt := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = patch, &pt
	return allow, ResultInjected, name
}

func deny(code int32, reason metav1.StatusReason, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{
		Allowed: false,
		Result:  &metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg},
	}
}

func (h *Handler) fail(w http.ResponseWriter, start time.Time, code int, msg string) {
	h.metrics.observe(ResultInvalid, time.Since(start))
	h.log.Warn("bad admission request", "status", code, "reason", msg)
	http.Error(w, msg, code)
}
