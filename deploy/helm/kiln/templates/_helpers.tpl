{{/* The chart's name. */}}
{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name prefix. */}}
{{- define "kiln.fullname" -}}
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

{{/* Labels every object carries. */}}
{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the server pods. */}}
{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Selector labels of the worker pods. */}}
{{- define "kiln.workerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{/* The service account name. */}}
{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The server image. */}}
{{- define "kiln.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* kiln's config: .Values.config, plus tracing when an endpoint is set. */}}
{{- define "kiln.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if .Values.tracing.otlpEndpoint }}
{{- $_ := set $config "tracing" (dict "otlp_endpoint" .Values.tracing.otlpEndpoint "service_name" .Values.tracing.serviceName "sampling_ratio" .Values.tracing.samplingRatio) }}
{{- end }}
{{- /* Execution runs other people's commands: off unless this release
       also runs workers (or the config says so explicitly). */}}
{{- $execution := deepCopy (default (dict) $config.execution) }}
{{- if not (hasKey $execution "enabled") }}
{{- $_ := set $execution "enabled" .Values.worker.enabled }}
{{- end }}
{{- $_ := set $config "execution" $execution }}
{{- toYaml $config }}
{{- end }}

{{/* The worker pools: worker.pools, or one pool (named "") from the
worker.* settings. Each pool is a dict with every setting filled in. */}}
{{- define "kiln.workerPools" -}}
{{- $w := .Values.worker }}
{{- $defaults := dict "name" "" "properties" $w.properties "concurrency" $w.concurrency "replicaCount" $w.replicaCount "resources" $w.resources "nodeSelector" $w.nodeSelector "tolerations" $w.tolerations "image" $w.image }}
{{- $pools := list }}
{{- if $w.pools }}
{{- range $w.pools }}
{{- $pools = append $pools (merge (deepCopy .) (deepCopy (omit $defaults "name"))) }}
{{- end }}
{{- else }}
{{- $pools = list $defaults }}
{{- end }}
{{- toJson $pools }}
{{- end }}

{{/* A pool's resource name suffix. */}}
{{- define "kiln.poolSuffix" -}}
{{- if . }}-worker-{{ . }}{{ else }}-worker{{ end }}
{{- end }}

{{/* The `platform` label kiln's demand metrics give actions that request
these properties (a dict): "p" and 12 hex digits of the SHA-256 of the
sorted [name, value] pairs as JSON; "none" for none. */}}
{{- define "kiln.platformLabel" -}}
{{- $props := . }}
{{- $pairs := list }}
{{- range $k := keys $props | sortAlpha }}
{{- $pairs = append $pairs (list $k (toString (get $props $k))) }}
{{- end }}
{{- if $pairs }}p{{ $pairs | toJson | sha256sum | trunc 12 }}{{ else }}none{{ end }}
{{- end }}

{{/* The platform labels a pool serves: its `platforms` (the property sets
its actions request), or its own properties. */}}
{{- define "kiln.poolLabels" -}}
{{- $labels := list }}
{{- range (.platforms | default (list .properties)) }}
{{- $labels = append $labels (include "kiln.platformLabel" .) }}
{{- end }}
{{- join "," $labels }}
{{- end }}
