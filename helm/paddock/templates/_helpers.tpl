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
{{- define "paddock.redisCaDir" -}}/etc/paddock/redis-ca{{- end }}
{{- define "paddock.hfTokenDir" -}}/etc/paddock/huggingface{{- end }}
{{- define "paddock.approvalKeysDir" -}}/etc/paddock/approval-keys{{- end }}

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
{{- $approval := dict "revoked" .Values.approval.revoked "workers" .Values.approval.workers }}
{{- with .Values.approval.policy }}{{ $_ := set $approval "policy" . }}{{ end }}
{{- $keys := list }}
{{- range .Values.approval.keysSecret.keys }}
{{- $keys = append $keys (printf "%s/%s" (include "paddock.approvalKeysDir" $) .) }}
{{- end }}
{{- $_ := set $approval "keys" $keys }}
{{- $_ := set $config "approval" $approval }}
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

{{/* GPUs one model's replica uses: tensor x pipeline parallel x gpus per worker (a fraction allowed). */}}
{{- define "paddock.modelGpus" -}}
{{- $r := .resources | default dict }}
{{- mulf ($r.tensor_parallel_size | default 1) ($r.pipeline_parallel_size | default 1) ($r.gpus | default 0) }}
{{- end }}

{{/*
Standalone: the GPUs of the one pod, the models' sum rounded up once (fractional GPUs share one).
Fails for a model whose gpu_shape spans several nodes: that needs rayservice mode.
*/}}
{{- define "paddock.standaloneGpus" -}}
{{- $total := 0.0 }}
{{- range (include "paddock.models" . | fromYaml).models }}
{{- $shape := (.resources | default dict).gpu_shape }}
{{- if and $shape (gt (int ($shape.nodes | default 1)) 1) }}
{{- fail (printf "model %s needs %v nodes of %v GPUs (gpu_shape): use mode rayservice" .id $shape.nodes $shape.gpus_per_node) }}
{{- end }}
{{- $total = addf $total (include "paddock.modelGpus" . | float64) }}
{{- end }}
{{- ceil $total | int }}
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
{{- /* Ray CPUs for the model's replica only: no ingress and no CPU-only model fits beside it. */}}
{{- $cpus := toString (ceil ((.model.resources | default dict).cpus | default 1.0) | int) }}
rayStartParams: {{ merge (deepCopy (.spec.rayStartParams | default dict)) (dict "num-cpus" $cpus) | toYaml | nindent 2 }}
resources: {{ toYaml $resources | nindent 2 }}
nodeSelector: {{ .spec.nodeSelector | default dict | toYaml | nindent 2 }}
tolerations: {{ .spec.tolerations | default list | toYaml | nindent 2 }}
affinity: {{ .spec.affinity | default dict | toYaml | nindent 2 }}
runtimeClassName: {{ .spec.runtimeClassName | default "" | quote }}
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
{{- if .Values.huggingface.tokenSecret.name }}
- name: HF_TOKEN_PATH
  value: {{ printf "%s/%s" (include "paddock.hfTokenDir" .) .Values.huggingface.tokenSecret.key | quote }}
{{- end }}
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
{{- $audit := .Values.governance.audit }}
- name: PADDOCK_AUDIT_MAX_FILE_BYTES
  value: {{ include "paddock.bytes" $audit.maxFileSize | quote }}
- name: PADDOCK_AUDIT_ROTATE_INTERVAL_S
  value: {{ $audit.rotateIntervalSeconds | quote }}
- name: PADDOCK_AUDIT_MAX_TOTAL_BYTES
  value: {{ include "paddock.bytes" $audit.maxTotalSize | quote }}
- name: PADDOCK_AUDIT_MAX_FILES
  value: {{ int64 $audit.maxFiles | quote }}
- name: PADDOCK_AUDIT_REFUSAL_WINDOW_S
  value: {{ $audit.refusalWindowSeconds | quote }}
{{- if eq .Values.governance.stateStore.type "redis" }}
{{- $redis := .Values.governance.stateStore.redis }}
- name: PADDOCK_STATE_STORE
  value: {{ $redis.url | quote }}
{{- with $redis.username }}
- name: PADDOCK_STATE_STORE_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if $redis.existingSecret }}
- name: PADDOCK_STATE_STORE_PASSWORD_FILE
  value: {{ printf "%s/%s" (include "paddock.redisSecretDir" .) $redis.passwordKey | quote }}
{{- end }}
{{- if $redis.caSecret.name }}
- name: PADDOCK_STATE_STORE_CA_FILE
  value: {{ printf "%s/%s" (include "paddock.redisCaDir" .) $redis.caSecret.key | quote }}
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
{{- $redis := .Values.governance.stateStore.redis }}
{{- if and (eq .Values.governance.stateStore.type "redis") $redis.existingSecret }}
- name: redis-password
  secret:
    secretName: {{ $redis.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $redis.passwordKey }}
        path: {{ $redis.passwordKey }}
{{- end }}
{{- if and (eq .Values.governance.stateStore.type "redis") $redis.caSecret.name }}
- name: redis-ca
  secret:
    secretName: {{ $redis.caSecret.name }}
    defaultMode: 0444
    items:
      - key: {{ $redis.caSecret.key }}
        path: {{ $redis.caSecret.key }}
{{- end }}
{{- end }}
{{- with .Values.huggingface.tokenSecret.name }}
- name: hf-token
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ $.Values.huggingface.tokenSecret.key }}
        path: {{ $.Values.huggingface.tokenSecret.key }}
{{- end }}
{{- with .Values.approval.keysSecret.name }}
- name: approval-keys
  secret:
    secretName: {{ . }}
    defaultMode: 0444
    items:
{{- range $.Values.approval.keysSecret.keys }}
      - key: {{ . }}
        path: {{ . }}
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
{{- if and (eq .Values.governance.stateStore.type "redis") .Values.governance.stateStore.redis.caSecret.name }}
- name: redis-ca
  mountPath: {{ include "paddock.redisCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}
{{- if .Values.huggingface.tokenSecret.name }}
- name: hf-token
  mountPath: {{ include "paddock.hfTokenDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.approval.keysSecret.name }}
- name: approval-keys
  mountPath: {{ include "paddock.approvalKeysDir" . }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
