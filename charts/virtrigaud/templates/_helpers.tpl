{{/* Names and labels shared by every template. */}}

{{- define "virtrigaud.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name, at most 63 characters (a DNS label). */}}
{{- define "virtrigaud.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "virtrigaud.selectorLabels" -}}
app.kubernetes.io/name: {{ include "virtrigaud.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end -}}

{{- define "virtrigaud.labels" -}}
{{ include "virtrigaud.selectorLabels" . }}
app.kubernetes.io/part-of: virtrigaud
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "virtrigaud.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "virtrigaud.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "virtrigaud.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "virtrigaud.leaseName" -}}
{{- default (printf "%s-leader" (include "virtrigaud.fullname" .)) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/*
The manager's rules on the objects it reconciles, in the namespaces it watches: the
VMMigration rules of the API reference's RBAC section, the same for VirtualMachines and
Providers, Events, and (providers.deploy) the Deployments and Services of the provider
servers it runs.
*/}}
{{- define "virtrigaud.managerRules" -}}
- apiGroups: ["infra.virtrigaud.io"]
  resources: ["vmmigrations", "virtualmachines", "providers"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["infra.virtrigaud.io"]
  resources: ["vmmigrations/status", "virtualmachines/status", "providers/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["get", "list", "create", "update", "patch"]
{{- if .Values.providers.deploy }}
# owner references with blockOwnerDeletion on the provider Deployments/Services
- apiGroups: ["infra.virtrigaud.io"]
  resources: ["providers/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
{{- end -}}
