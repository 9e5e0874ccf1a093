{{/* Chart name, truncated to a DNS label. */}}
{{- define "model-poller-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "model-poller-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "model-poller-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "model-poller-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-poller-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "model-poller-operator.labels" -}}
helm.sh/chart: {{ include "model-poller-operator.chart" . }}
{{ include "model-poller-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "model-poller-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "model-poller-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's user name, as the API server sees its ServiceAccount token. */}}
{{- define "model-poller-operator.user" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "model-poller-operator.serviceAccountName" . }}
{{- end }}

{{/*
Refuse namespace patterns when the RBAC is namespaced: a Role lives in one named namespace,
so "ml-*" (or kopf's "!ns" exclusions) cannot be granted by Roles.
*/}}
{{- define "model-poller-operator.checkNamespaces" -}}
{{- if .Values.rbac.create }}
{{- range .Values.watch.namespaces }}
{{- if regexMatch "[*?\\[\\]!]" . }}
{{- fail (printf "watch.namespaces: %q is a pattern, but with rbac.create=true the chart grants a Role in each watched namespace, which needs exact names: list the namespaces (e.g. --set 'watch.namespaces={ml,team-a}'), or set rbac.create=false and grant the rights yourself (see docs/security.md)" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
What the operator does to ModelDeployments and their children: in a ClusterRole when it
watches every namespace, in one Role per namespace when watch.namespaces is set.
*/}}
{{- define "model-poller-operator.applicationRules" -}}
# Post Kubernetes Events (version changes, errors) on the ModelDeployments, and read the
# pods' FailedMount Events: a missing credentials Secret shows there (the operator has no
# access to Secrets at all).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
# Watch the ModelDeployments; patch their metadata (kopf's progress annotations under
# modelpoller.dev) and their status (the aggregate).
- apiGroups: [modelpoller.dev]
  resources: [modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [modelpoller.dev]
  resources: [modeldeployments/status]
  verbs: [get, patch]
# Children carry ownerReferences with blockOwnerDeletion (needs this where the
# OwnerReferencesPermissionEnforcement admission plugin runs, e.g. OpenShift).
- apiGroups: [modelpoller.dev]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# The children, applied server-side (create/patch), watched to repair hand edits. The
# ValidatingAdmissionPolicy (admission-policy.yaml) narrows these writes to objects the
# operator owns, in the shape it renders: RBAC cannot say "only my children".
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [get, list, watch, create, patch]
# The poller's Role and RoleBinding. The operator may grant only what it holds itself:
# get/watch on modeldeployments and patch on modeldeployments/status (above).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch]
# The one optional child, deleted again when its field is unset: the PodDisruptionBudget
# (spec.disruptionBudget). The admission policy narrows writes and deletes to the operator's
# own, in its shape. No ConfigMaps: TF Serving's monitoring config (spec.serving.monitoring)
# is a pod-template annotation projected by a downwardAPI volume, so the operator reads no
# ConfigMap anywhere.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# The pods of the ModelDeployments (watched with a label selector): readiness, what the
# kubelet says about them, and pruning status.pollers entries of pods that are gone.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
{{- end }}

{{/* The webhook's Service, certificate Secret (and cert-manager Certificate) and Role. */}}
{{- define "model-poller-operator.webhookName" -}}
{{- printf "%s-webhook" (include "model-poller-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The names the webhook's serving certificate is for (how the API server calls the Service). */}}
{{- define "model-poller-operator.webhookHosts" -}}
{{- $service := include "model-poller-operator.webhookName" . -}}
{{ $service }}.{{ .Release.Namespace }}.svc,{{ $service }}.{{ .Release.Namespace }}.svc.cluster.local,{{ $service }}.{{ .Release.Namespace }},{{ $service }}
{{- end }}

{{/* Whether the operator keeps the certificate itself (self-signed), not cert-manager. */}}
{{- define "model-poller-operator.selfSigned" -}}
{{- if and .Values.webhook.enabled (not .Values.webhook.certManager.enabled) }}true{{ end }}
{{- end }}
