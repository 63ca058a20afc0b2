{{/* The namespace every namespaced object goes into. */}}
{{- define "keyshift.namespace" -}}
{{- required "namespace.name: write the namespace keyshift runs in, e.g. keyshift-system" .Values.namespace.name -}}
{{- end -}}

{{/* The keyshift image: repository:tag, the tag defaulting to appVersion. */}}
{{- define "keyshift.image" -}}
{{- printf "%s:%s" (required "image.repository: write the keyshift image's repository" .Values.image.repository) (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Labels Helm adds to every object's metadata (never to selectors or pod
templates): which chart rendered it and that Helm manages it.
*/}}
{{- define "keyshift.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The labels of the injector's and the controller's objects. */}}
{{- define "keyshift.injectorLabels" -}}
app.kubernetes.io/name: keyshift-injector
app.kubernetes.io/part-of: keyshift
{{ include "keyshift.helmLabels" . }}
{{- end -}}
{{- define "keyshift.controllerLabels" -}}
app.kubernetes.io/name: keyshift-controller
app.kubernetes.io/part-of: keyshift
{{ include "keyshift.helmLabels" . }}
{{- end -}}

{{/* Whether the injector reads its certificate from a mounted Secret. */}}
{{- define "keyshift.certFiles" -}}
{{- $m := .Values.certificate.mode -}}
{{- if eq $m "self" -}}
{{- else if or (eq $m "cert-manager") (eq $m "secret") -}}
true
{{- else -}}
{{- fail (printf "certificate.mode %q: write self, cert-manager or secret" $m) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the injector's serving certificate. */}}
{{- define "keyshift.tlsSecret" -}}
{{- if eq .Values.certificate.mode "secret" -}}
{{- required "certificate.secret.name: write the name of your kubernetes.io/tls Secret" .Values.certificate.secret.name -}}
{{- else -}}
keyshift-injector-tls
{{- end -}}
{{- end -}}

{{/* The address injected sidecars subscribe to, or "" with xDS off. */}}
{{- define "keyshift.xdsAddr" -}}
{{- if .Values.controller.xds.enabled -}}
{{- printf "keyshift-controller.%s.svc:%v" (include "keyshift.namespace" .) .Values.controller.xds.port -}}
{{- end -}}
{{- end -}}
