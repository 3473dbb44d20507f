{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "gantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, prefixed with the chart name unless it contains it.
Room is left for the "-device-plugin" suffix (14 characters) within 63.
*/}}
{{- define "gantry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 49 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 49 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 49 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "gantry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "scheduler").
*/}}
{{- define "gantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gantry.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Common labels of one component. Call with (dict "ctx" $ "component" "scheduler").
*/}}
{{- define "gantry.labels" -}}
helm.sh/chart: {{ include "gantry.chart" .ctx }}
{{ include "gantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Values.image.tag | default .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: gantry
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The container image.
*/}}
{{- define "gantry.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "gantry.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "gantry.fullname" .) }}
{{- end }}

{{- define "gantry.devicePlugin.fullname" -}}
{{- printf "%s-device-plugin" (include "gantry.fullname" .) }}
{{- end }}

{{- define "gantry.scheduler.serviceAccountName" -}}
{{- if .Values.scheduler.serviceAccount.create }}
{{- default (include "gantry.scheduler.fullname" .) .Values.scheduler.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.scheduler.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gantry.devicePlugin.serviceAccountName" -}}
{{- if .Values.devicePlugin.serviceAccount.create }}
{{- default (include "gantry.devicePlugin.fullname" .) .Values.devicePlugin.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.devicePlugin.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the ConfigMap holding the fake inventory.
*/}}
{{- define "gantry.devicePlugin.fakeConfigMap" -}}
{{- if .Values.devicePlugin.fake.configMap }}
{{- .Values.devicePlugin.fake.configMap }}
{{- else }}
{{- printf "%s-fake-inventory" (include "gantry.devicePlugin.fullname" .) }}
{{- end }}
{{- end }}
