{{- define "keyvault-csi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyvault-csi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "keyvault-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyvault-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keyvault-csi.labels" -}}
{{ include "keyvault-csi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The SecretSync controller's pods: a name of their own, so no selector of the DaemonSet's (its own,
the metrics Service's, a PodMonitor's) ever matches them. */}}
{{- define "keyvault-csi.syncSelectorLabels" -}}
app.kubernetes.io/name: {{ include "keyvault-csi.name" . }}-sync-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: sync-controller
{{- end -}}

{{- define "keyvault-csi.syncLabels" -}}
{{ include "keyvault-csi.syncSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "keyvault-csi.serviceAccountName" -}}
secrets-store-csi-driver
{{- end -}}

{{- define "keyvault-csi.image" -}}
{{- $tag := default .Chart.AppVersion .Values.linux.image.tag -}}
{{- if .Values.linux.image.digest -}}
{{ .Values.linux.image.repository }}@{{ .Values.linux.image.digest }}
{{- else -}}
{{ .Values.linux.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{/* The Azure provider's flags: on the driver (isolation "none") or the provider container. */}}
{{- define "keyvault-csi.azureArgs" -}}
- --construct-pem-chain={{ .Values.provider.constructPEMChain }}
- --write-cert-and-key-in-separate-files={{ .Values.provider.writeCertAndKeyInSeparateFiles }}
- --cloud-name={{ .Values.provider.cloudName }}
- --cloud-env-dir={{ .Values.provider.cloudEnvDir }}
- --keyvault-rate-limit={{ .Values.provider.keyvaultRateLimit }}
- --keyvault-concurrency={{ int64 .Values.provider.keyvaultConcurrency }}
{{- with .Values.provider.tokenProxyURL }}
- --token-proxy-url={{ . }}
{{- end }}
{{- with .Values.provider.sniName }}
- --sni-name={{ . }}
{{- end }}
{{- with .Values.provider.tokenProxyCAFile }}
- --token-proxy-ca-file={{ . }}
{{- end }}
{{- end -}}

{{/*
A scrape endpoint's TLS and credentials with metrics.auth: (list $auth isServiceMonitor). A PodMonitor
has no bearerTokenFile; it needs auth.authorization.
*/}}
{{- define "keyvault-csi.scrapeAuth" -}}
{{- $auth := index . 0 -}}
{{- if $auth.enabled -}}
scheme: https
tlsConfig:
  {{- toYaml $auth.tlsConfig | nindent 2 }}
{{- if $auth.authorization }}
authorization:
  {{- toYaml $auth.authorization | nindent 2 }}
{{- else if and (index . 1) $auth.bearerTokenFile }}
bearerTokenFile: {{ $auth.bearerTokenFile }}
{{- end }}
{{- end -}}
{{- end }}
