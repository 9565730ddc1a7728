{{/*
Expand the name of the chart.
*/}}
{{- define "paddock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 characters at most, the DNS label limit).
In rayservice mode KubeRay derives longer names from it (<name>-serve-svc, <name>-<suffix>-head-…),
so keep release names short there.
*/}}
{{- define "paddock.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "paddock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "paddock.labels" -}}
helm.sh/chart: {{ include "paddock.chart" . }}
{{ include "paddock.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paddock
{{- end }}

{{/*
Selector labels
*/}}
{{- define "paddock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paddock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of pod templates: no chart version, so that a chart-only change neither rolls the pods nor,
in rayservice mode, makes KubeRay build a new Ray cluster (it hashes the cluster spec).
*/}}
{{- define "paddock.podLabels" -}}
{{ include "paddock.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/part-of: paddock
{{- end }}

{{/*
Selector labels of the pods that run Paddock (the Deployment's, or every Ray pod of the RayService).
*/}}
{{- define "paddock.serverSelectorLabels" -}}
{{ include "paddock.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
The name of the service account to use
*/}}
{{- define "paddock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paddock.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository:tag, or repository@digest.
*/}}
{{- define "paddock.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* Names of the chart's objects. */}}
{{- define "paddock.configName" -}}{{ include "paddock.fullname" . }}-config{{- end }}
{{- define "paddock.governanceSecretName" -}}
{{- .Values.governance.existingSecret | default (printf "%s-governance" (include "paddock.fullname" .)) }}
{{- end }}
{{- define "paddock.cacheClaimName" -}}
{{- .Values.modelCache.persistentVolumeClaim.existingClaim | default (printf "%s-model-cache" (include "paddock.fullname" .)) }}
{{- end }}
{{- define "paddock.stateClaimName" -}}
{{- .Values.state.persistentVolumeClaim.existingClaim | default (printf "%s-state" (include "paddock.fullname" .)) }}
{{- end }}

{{/* The Service that carries the API: the chart's own, or KubeRay's serve Service. */}}
{{- define "paddock.apiServiceName" -}}
{{- if eq .Values.mode "rayservice" -}}
{{ include "paddock.fullname" . }}-serve-svc
{{- else -}}
{{ include "paddock.fullname" . }}
{{- end }}
{{- end }}
{{- define "paddock.apiServicePort" -}}
{{- if eq .Values.mode "rayservice" -}}{{ .Values.ingress.port }}{{- else -}}{{ .Values.service.port }}{{- end }}
{{- end }}

{{/* Paths inside the containers. */}}
{{- define "paddock.configDir" -}}/etc/paddock/config{{- end }}
{{- define "paddock.configFile" -}}/etc/paddock/config/paddock.yaml{{- end }}
{{- define "paddock.secretDir" -}}/etc/paddock/governance{{- end }}
{{- define "paddock.redisSecretDir" -}}/etc/paddock/redis{{- end }}

{{/*
The Paddock service config (schema.py ServiceConfig) as a dict, from .Values.ingress/admin/metrics/models.
Hosts are 0.0.0.0 so the pod's Services reach them; rayservice mode caps the ingress at one replica per node.
*/}}
{{- define "paddock.serviceConfig" -}}
{{- $ingress := deepCopy .Values.ingress }}
{{- $_ := set $ingress "host" "0.0.0.0" }}
{{- if and (eq .Values.mode "rayservice") (not $ingress.max_replicas_per_node) }}
{{- $_ := set $ingress "max_replicas_per_node" 1 }}
{{- end }}
{{- if not $ingress.max_replicas_per_node }}
{{- $_ := unset $ingress "max_replicas_per_node" }}
{{- end }}
{{- $admin := merge (dict "host" "0.0.0.0") (deepCopy .Values.admin) }}
{{- $metrics := merge (dict "host" "0.0.0.0") (deepCopy .Values.metrics) }}
{{- $models := (include "paddock.models" . | fromYaml).models }}
{{- $config := dict "ingress" $ingress "admin" $admin "metrics" $metrics "models" $models }}
{{- toYaml $config }}
{{- end }}

{{/*
The served models ({models: [...]}): .Values.models with every {catalog: NAME, ...} entry replaced by
the model of deploy/models/NAME.yaml (files/models links there), the entry's other keys merged over it.
`revision` pins an unpinned catalog model; an unpinned one without it fails the render with its pin hint.
*/}}
{{- define "paddock.models" -}}
{{- $models := list }}
{{- range $index, $model := .Values.models }}
{{- if hasKey $model "catalog" }}
{{- $models = append $models (include "paddock.catalogModel" (dict "root" $ "model" $model "index" $index) | fromYaml) }}
{{- else }}
{{- $models = append $models $model }}
{{- end }}
{{- end }}
{{- toYaml (dict "models" $models) }}
{{- end }}

{{/* One catalog model with its overrides (dict root, model, index). */}}
{{- define "paddock.catalogModel" -}}
{{- $name := .model.catalog }}
{{- $text := .root.Files.Get (printf "files/models/%s.yaml" $name) }}
{{- if not $text }}
{{- fail (printf "models[%d].catalog: no catalog model %q (the files of deploy/models, without .yaml)" .index $name) }}
{{- end }}
{{- $entry := deepCopy (first (fromYaml $text).models) }}
{{- $merged := mergeOverwrite $entry (omit .model "catalog" "revision") }}
{{- $source := $merged.source }}
{{- with .model.revision }}
{{- $_ := set $source "revision" . }}
{{- end }}
{{- if and (hasKey $source "hf") (not $source.revision) }}
{{- fail (printf "models[%d] (catalog %s): %s is not pinned (%s). Pin the commit you validated: `git ls-remote https://huggingface.co/%s refs/heads/main` prints it (or the History tab of the model page); set models[%d].revision to its 40 hex digits" .index $name $source.hf ($source.pin_hint | default "no hint") $source.hf .index) }}
{{- end }}
{{- $_ := unset $source "pin_hint" }}
{{- toYaml $merged }}
{{- end }}

{{/* GPUs one model's replica uses: tensor x pipeline parallel x gpus per worker (rounded up). */}}
{{- define "paddock.modelGpus" -}}
{{- $r := .resources | default dict }}
{{- ceil (mulf ($r.tensor_parallel_size | default 1) ($r.pipeline_parallel_size | default 1) ($r.gpus | default 0)) | int }}
{{- end }}

{{/*
Standalone: the GPUs of the one pod, the sum over the models (each must fit one node). Fails for a
model whose gpu_shape spans several nodes: that needs rayservice mode.
*/}}
{{- define "paddock.standaloneGpus" -}}
{{- $total := 0 }}
{{- range (include "paddock.models" . | fromYaml).models }}
{{- $shape := (.resources | default dict).gpu_shape }}
{{- if and $shape (gt (int ($shape.nodes | default 1)) 1) }}
{{- fail (printf "model %s needs %v nodes of %v GPUs (gpu_shape): use mode rayservice" .id $shape.nodes $shape.gpus_per_node) }}
{{- end }}
{{- $total = add $total (include "paddock.modelGpus" . | int) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* Standalone pod resources: .Values.resources, with nvidia.com/gpu from the models unless set there. */}}
{{- define "paddock.standaloneResources" -}}
{{- $resources := deepCopy .Values.resources }}
{{- $gpus := include "paddock.standaloneGpus" . | int }}
{{- if gt $gpus 0 }}
{{- range $kind := list "requests" "limits" }}
{{- $section := get $resources $kind | default dict }}
{{- if not (hasKey $section "nvidia.com/gpu") }}
{{- $_ := set $section "nvidia.com/gpu" $gpus }}
{{- end }}
{{- $_ := set $resources $kind $section }}
{{- end }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/*
RayService worker groups ({groups: [...]}): rayService.workerGroups, then with
rayService.modelWorkerGroups.enabled one group per model with a gpu_shape: pods of gpus_per_node GPUs,
gpu_shape.nodes pods per replica, sized for the model's autoscaling range.
*/}}
{{- define "paddock.workerGroups" -}}
{{- $groups := list }}
{{- range .Values.rayService.workerGroups }}
{{- $groups = append $groups . }}
{{- end }}
{{- $spec := .Values.rayService.modelWorkerGroups }}
{{- if $spec.enabled }}
{{- range (include "paddock.models" . | fromYaml).models }}
{{- $shape := (.resources | default dict).gpu_shape }}
{{- if $shape }}
{{- $groups = append $groups (include "paddock.modelWorkerGroup" (dict "model" . "spec" $spec) | fromYaml) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "groups" $groups) }}
{{- end }}

{{/* One model's worker group (dict model, spec). */}}
{{- define "paddock.modelWorkerGroup" -}}
{{- $shape := .model.resources.gpu_shape }}
{{- $nodes := int ($shape.nodes | default 1) }}
{{- $gpus := int $shape.gpus_per_node }}
{{- $scaling := .model.autoscaling | default dict }}
{{- $min := int (hasKey $scaling "min_replicas" | ternary $scaling.min_replicas 1) }}
{{- $max := int ($scaling.max_replicas | default 1) }}
{{- $initial := int (hasKey $scaling "initial_replicas" | ternary $scaling.initial_replicas $min) }}
{{- $memory := printf "%dGi" (mul $gpus (int .spec.memoryPerGpuGi)) }}
{{- $resources := dict "requests" (dict "cpu" (toString (mul $gpus (int .spec.cpuPerGpu))) "memory" $memory "nvidia.com/gpu" $gpus) "limits" (dict "memory" $memory "nvidia.com/gpu" $gpus) }}
groupName: {{ printf "gpu-%s" (.model.id | lower | replace "." "-" | replace "/" "-" | replace "_" "-" | replace ":" "-") | trunc 63 | trimSuffix "-" }}
replicas: {{ mul $nodes $initial }}
minReplicas: {{ mul $nodes $min }}
maxReplicas: {{ mul $nodes (max $max 1) }}
rayStartParams: {{ .spec.rayStartParams | default dict | toYaml | nindent 2 }}
resources: {{ toYaml $resources | nindent 2 }}
nodeSelector: {{ .spec.nodeSelector | default dict | toYaml | nindent 2 }}
tolerations: {{ .spec.tolerations | default list | toYaml | nindent 2 }}
affinity: {{ .spec.affinity | default dict | toYaml | nindent 2 }}
{{- end }}

{{/*
The Ray Serve config (serveConfigV2) carrying the service config as the args of Paddock's app builder.
Ray Serve's own proxy is disabled: Paddock's ingress owns the serve port and answers /-/healthz.
*/}}
{{- define "paddock.serveConfig" -}}
{{- $app := dict "name" "paddock" "import_path" "service.serve.builder:app_builder" "route_prefix" nil "args" (include "paddock.serviceConfig" . | fromYaml) }}
{{- $serve := dict "proxy_location" "Disabled" "http_options" (dict "host" "127.0.0.1") "applications" (list $app) }}
{{- toYaml $serve }}
{{- end }}

{{/*
Environment of every Paddock container (the standalone server, every Ray node): process settings
(settings.py) as PADDOCK_*; secrets only as file paths.
*/}}
{{- define "paddock.env" -}}
- name: PADDOCK_CACHE_DIR
  value: {{ .Values.modelCache.mountPath | quote }}
- name: PADDOCK_STATE_DIR
  value: {{ printf "%s/state" .Values.state.mountPath | quote }}
- name: HOME
  value: /tmp
- name: VLLM_CACHE_ROOT
  value: {{ printf "%s/vllm" .Values.modelCache.mountPath | quote }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.modelCache.mountPath | quote }}
{{- if .Values.governance.enabled }}
- name: PADDOCK_GOVERNANCE
  value: "on"
- name: PADDOCK_GOVERNANCE_FILE
  value: {{ printf "%s/governance.yaml" (include "paddock.secretDir" .) | quote }}
- name: PADDOCK_ADMIN_TOKEN_FILE
  value: {{ printf "%s/admin-token" (include "paddock.secretDir" .) | quote }}
{{- if .Values.governance.keySecret.enabled }}
- name: PADDOCK_KEY_SECRET_FILE
  value: {{ printf "%s/key-secret" (include "paddock.secretDir" .) | quote }}
{{- end }}
{{- if .Values.governance.auditKey.enabled }}
- name: PADDOCK_AUDIT_KEY_FILE
  value: {{ printf "%s/audit-key" (include "paddock.secretDir" .) | quote }}
{{- end }}
- name: PADDOCK_AUDIT_DIR
  value: {{ printf "%s/audit" .Values.state.mountPath | quote }}
- name: PADDOCK_AUDIT_STDOUT
  value: {{ .Values.governance.auditStdout | quote }}
{{- if eq .Values.governance.stateStore.type "redis" }}
- name: PADDOCK_STATE_STORE
  value: {{ .Values.governance.stateStore.redis.url | quote }}
{{- if .Values.governance.stateStore.redis.existingSecret }}
- name: PADDOCK_STATE_STORE_PASSWORD_FILE
  value: {{ printf "%s/%s" (include "paddock.redisSecretDir" .) .Values.governance.stateStore.redis.passwordKey | quote }}
{{- end }}
{{- else }}
- name: PADDOCK_STATE_STORE
  value: local
{{- end }}
- name: PADDOCK_FAIL_OPEN
  value: {{ .Values.governance.failOpen | quote }}
- name: PADDOCK_TRUSTED_PROXIES
  value: {{ .Values.governance.trustedProxies | toJson | quote }}
- name: PADDOCK_AUTH_FAILURES_PER_MINUTE
  value: {{ .Values.governance.authFailuresPerMinute | quote }}
{{- else }}
- name: PADDOCK_GOVERNANCE
  value: "off"
{{- end }}
- name: PADDOCK_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: PADDOCK_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
{{- if .Values.tracing.enabled }}
- name: PADDOCK_TRACING
  value: "true"
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.tracing.protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.tracing.serviceName | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=%s,k8s.pod.name=$(POD_NAME),service.namespace=%s" .Release.Namespace .Release.Name | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.tracing.sampler | quote }}
{{- with .Values.tracing.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.rayServeTuning }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes shared by every Paddock pod (the config ConfigMap only in standalone mode). */}}
{{- define "paddock.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmp.sizeLimit }}
- name: model-cache
{{- if or .Values.modelCache.persistentVolumeClaim.create .Values.modelCache.persistentVolumeClaim.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ include "paddock.cacheClaimName" . }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelCache.emptyDirSizeLimit }}
{{- end }}
- name: state
{{- if and (eq .Values.mode "standalone") (or .Values.state.persistentVolumeClaim.create .Values.state.persistentVolumeClaim.existingClaim) }}
  persistentVolumeClaim:
    claimName: {{ include "paddock.stateClaimName" . }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.state.emptyDirSizeLimit }}
{{- end }}
{{- if .Values.governance.enabled }}
- name: governance
  secret:
    secretName: {{ include "paddock.governanceSecretName" . }}
    defaultMode: 0440
{{- if and (eq .Values.governance.stateStore.type "redis") .Values.governance.stateStore.redis.existingSecret }}
- name: redis-password
  secret:
    secretName: {{ .Values.governance.stateStore.redis.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.governance.stateStore.redis.passwordKey }}
        path: {{ .Values.governance.stateStore.redis.passwordKey }}
{{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "paddock.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
- name: state
  mountPath: {{ .Values.state.mountPath }}
{{- if .Values.governance.enabled }}
- name: governance
  mountPath: {{ include "paddock.secretDir" . }}
  readOnly: true
{{- if and (eq .Values.governance.stateStore.type "redis") .Values.governance.stateStore.redis.existingSecret }}
- name: redis-password
  mountPath: {{ include "paddock.redisSecretDir" . }}
  readOnly: true
{{- end }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Render-time checks that the schema cannot express.
*/}}
{{- define "paddock.validate" -}}
{{- if and (eq .Values.mode "standalone") (le (float64 .Values.terminationGracePeriodSeconds) (addf .Values.preStopSleepSeconds .Values.ingress.drain_timeout_s)) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + ingress.drain_timeout_s (%v)" .Values.terminationGracePeriodSeconds (addf .Values.preStopSleepSeconds .Values.ingress.drain_timeout_s)) }}
{{- end }}
{{- if and .Values.governance.enabled (eq .Values.governance.stateStore.type "redis") (not .Values.governance.stateStore.redis.url) }}
{{- fail "governance.stateStore.redis.url is required when governance.stateStore.type is redis" }}
{{- end }}
{{- if and .Values.governance.enabled .Values.governance.existingSecret (or .Values.governance.adminToken .Values.governance.keySecret.value .Values.governance.auditKey.value) }}
{{- fail "governance.existingSecret is set: put adminToken, keySecret and auditKey in that Secret, not in values" }}
{{- end }}
{{- if and (eq .Values.mode "rayservice") .Values.ingress.max_replicas_per_node (ne (int .Values.ingress.max_replicas_per_node) 1) }}
{{- fail "ingress.max_replicas_per_node must be 1 (or null) in rayservice mode: one Paddock ingress per Ray node owns the serve port, its /-/healthz and metrics port" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name (list "PADDOCK_HOST" "PADDOCK_PORT" "PADDOCK_ADMIN_PORT" "PADDOCK_METRICS_PORT") }}
{{- fail (printf "extraEnv: %s would override the service config in both modes, but the chart's ports, Services and probes follow the values: set ingress, admin and metrics in values instead" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.tracing.enabled (not .Values.tracing.otlpEndpoint) }}
{{- fail "tracing.otlpEndpoint is required when tracing is enabled (e.g. http://otel-collector.observability:4318)" }}
{{- end }}
{{- if and .Values.rayService.gcsFaultTolerance.enabled (not .Values.rayService.gcsFaultTolerance.redisAddress) }}
{{- fail "rayService.gcsFaultTolerance.redisAddress is required when GCS fault tolerance is enabled" }}
{{- end }}
{{- if and .Values.monitoring.serviceMonitor.enabled (eq .Values.mode "rayservice") }}
{{- fail "monitoring.serviceMonitor is for standalone mode; use monitoring.podMonitor in rayservice mode (every Ray pod exports metrics)" }}
{{- end }}
{{- if and (eq .Values.mode "standalone") .Values.monitoring.serviceMonitor.enabled .Values.monitoring.podMonitor.enabled }}
{{- fail "enable monitoring.serviceMonitor or monitoring.podMonitor in standalone mode, not both: they would scrape the same pods twice" }}
{{- end }}
{{- $cache := .Values.modelCache.persistentVolumeClaim }}
{{- $shared := or (has "ReadWriteMany" $cache.accessModes) (has "ReadOnlyMany" $cache.accessModes) }}
{{- $manyPods := or (eq .Values.mode "rayservice") (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- if and $cache.create (not $cache.existingClaim) $manyPods (not $shared) }}
{{- fail "modelCache.persistentVolumeClaim is mounted by several pods (replicas or Ray nodes): it needs accessModes [ReadWriteMany]" }}
{{- end }}
{{- if and (eq .Values.mode "rayservice") (or .Values.state.persistentVolumeClaim.create .Values.state.persistentVolumeClaim.existingClaim) }}
{{- fail "state.persistentVolumeClaim is for standalone mode: Ray pods keep local state on an emptyDir (use governance.stateStore redis, and ship the audit log from stdout)" }}
{{- end }}
{{- $pvc := .Values.state.persistentVolumeClaim }}
{{- if and (eq .Values.mode "standalone") (or $pvc.create $pvc.existingClaim) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "state.persistentVolumeClaim needs replicaCount 1 and autoscaling off: the local state is one pod's (use governance.stateStore redis for several pods)" }}
{{- end }}
{{- end }}
