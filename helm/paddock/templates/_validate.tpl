{{/*
Render-time checks that the schema cannot express.
*/}}
{{- define "paddock.validate" -}}
{{- if and (eq .Values.mode "standalone") (le (float64 .Values.terminationGracePeriodSeconds) (addf .Values.preStopSleepSeconds .Values.ingress.drain_timeout_s)) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + ingress.drain_timeout_s (%v)" .Values.terminationGracePeriodSeconds (addf .Values.preStopSleepSeconds .Values.ingress.drain_timeout_s)) }}
{{- end }}
{{- if and (eq .Values.mode "rayservice") .Values.rayService.workerDrain.enabled }}
{{- $drain := .Values.rayService.workerDrain }}
{{- $deadline := int (include "paddock.workerDrainDeadline" .) }}
{{- /* A model replica's graceful_shutdown_timeout_s (service/serve/builder.py model_options), the app's longest. */}}
{{- $replicaStop := addf .Values.ingress.drain_timeout_s 15 }}
{{- if lt (float64 $deadline) $replicaStop }}
{{- fail (printf "rayService worker pods: terminationGracePeriodSeconds (%s) must be at least rayService.workerDrain.rayStopSeconds (%v) + ingress.drain_timeout_s + 15 (%v): the preStop's drain deadline (the grace period less rayStopSeconds: %d s) must leave a model replica its graceful shutdown (ingress.drain_timeout_s + 15 s); raise rayService.workerDrain.terminationGracePeriodSeconds (or terminationGracePeriodSeconds)" (include "paddock.workerGracePeriod" .) $drain.rayStopSeconds $replicaStop $deadline) }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if eq .name "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S" }}
{{- fail "extraEnv: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S is set by the chart on Ray workers from rayService.workerDrain.rayStopSeconds (it must fit the grace period after the preStop)" }}
{{- end }}
{{- end }}
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
{{- include "paddock.validateStateStore" . }}
{{- include "paddock.validateAudit" . }}
{{- include "paddock.validateImages" . }}
{{- if eq .Values.mode "rayservice" }}
{{- include "paddock.validateRayService" . }}
{{- end }}
{{- if and (eq .Values.mode "standalone") .Values.autoscaling.enabled (eq .Values.autoscaling.metric "inflight") (not .Values.metrics.enabled) }}
{{- fail "autoscaling.metric inflight scales on paddock_inflight_requests, which Paddock exports only with metrics.enabled" }}
{{- end }}
{{- /* A model whose approval is required needs trusted keys, or every replica refuses to start. */}}
{{- $policy := .Values.approval.policy }}
{{- range $index, $model := (include "paddock.models" . | fromYaml).models }}
{{- $embedded := hasKey ($model.source | default dict) "embedded" }}
{{- $own := $model.approval | default "" }}
{{- $effective := $own | default $policy | default (ternary "off" "required" $embedded) }}
{{- if and (eq $effective "required") (or (not $.Values.approval.keysSecret.name) (not $.Values.approval.keysSecret.keys)) }}
{{- fail (printf "models[%d] (%s) must be an approved artifact (approval: required) but approval.keysSecret names no public keys: sign the model folder with `paddock models approve DIR --key KEY`, put the public key in a Secret and set approval.keysSecret.name and .keys (or set approval: warn / off for this model)" $index $model.id) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
How many Paddock pods admit requests: standalone replicas (the HPA's maximum), or in rayservice mode
the Ray nodes that run an ingress replica (one per node).
*/}}
{{- define "paddock.servingPods" -}}
{{- if eq .Values.mode "rayservice" }}
{{- int .Values.ingress.replicas }}
{{- else if .Values.autoscaling.enabled }}
{{- int .Values.autoscaling.maxReplicas }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* The governance state store: one per pod only with one pod; Redis URLs without credentials, naming their database. */}}
{{- define "paddock.validateStateStore" -}}
{{- $store := .Values.governance.stateStore }}
{{- $pods := include "paddock.servingPods" . | int }}
{{- if and .Values.governance.enabled (eq $store.type "local") (gt $pods 1) }}
{{- fail (printf "governance.stateStore.type local keeps limits, budgets and kills in each pod, and this release runs up to %d Paddock pods (%s): each would admit a tenant's full limit and a kill would reach one pod only. Set governance.stateStore.type redis with governance.stateStore.redis.url (docs/kubernetes.md, \"Governance state\"), or run one pod" $pods (eq .Values.mode "rayservice" | ternary "ingress.replicas: one Ray node each" "replicaCount or autoscaling.maxReplicas")) }}
{{- end }}
{{- if and .Values.governance.enabled (eq $store.type "redis") }}
{{- $url := $store.redis.url }}
{{- if not (regexMatch "^rediss?://[^/@?#]+/[0-9]+$" $url) }}
{{- fail (printf "governance.stateStore.redis.url %q: use redis://host:port/db (rediss:// for TLS) and name the database, e.g. redis://redis.paddock.svc:6379/1; credentials are governance.stateStore.redis.username and existingSecret" $url) }}
{{- end }}
{{- if and $store.redis.caSecret.name (not (hasPrefix "rediss://" $url)) }}
{{- fail "governance.stateStore.redis.caSecret verifies TLS: the url must be rediss://" }}
{{- end }}
{{- $ft := .Values.rayService.gcsFaultTolerance }}
{{- if and (eq .Values.mode "rayservice") $ft.enabled }}
{{- $server := regexReplaceAll "^rediss?://([^/]+)/.*$" $url "${1}" }}
{{- $gcs := regexReplaceAll "^rediss?://" $ft.redisAddress "" | trimSuffix "/" }}
{{- if and (eq $server $gcs) (eq (regexReplaceAll "^.*/([0-9]+)$" $url "${1}") "0") }}
{{- fail (printf "governance.stateStore.redis.url uses database 0 of %s, where Ray's GCS fault tolerance (rayService.gcsFaultTolerance) keeps its state (Ray always uses database 0): give governance its own, e.g. redis://%s/1" $server $server) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Every pod can run what it is given: embedded models need the demo image, GPU pods (the CUDA image) GPU models. */}}
{{- define "paddock.validateImages" -}}
{{- $embedded := include "paddock.embeddedModels" . }}
{{- if and $embedded (eq .Values.image.variant "cpu") }}
{{- fail (printf "models %s have an embedded source, which only the demo image has: set image.variant cpu-demo (or leave it empty), or serve models from the hub" $embedded) }}
{{- end }}
{{- if eq .Values.mode "standalone" }}
{{- $cpuOnly := include "paddock.cpuOnlyModels" . }}
{{- if and $cpuOnly (include "paddock.requestsGpus" (include "paddock.standaloneResources" . | fromYaml)) }}
{{- fail (printf "models %s use no GPU (resources.gpus 0), but this pod requests GPUs and so runs the CUDA image (gpuImage), whose vLLM has no CPU engine: give each a fraction of the GPU (resources.gpus: 0.1, and engine_args.gpu_memory_utilization so that every engine fits), or serve them from a CPU release" $cpuOnly) }}
{{- end }}
{{- end }}
{{- end }}

{{/* KubeRay 1.7's own checks (ray-operator/controllers/ray/utils/validation.go), and where replicas land. */}}
{{- define "paddock.validateRayService" -}}
{{- $rs := .Values.rayService }}
{{- range (include "paddock.workerGroups" . | fromYaml).groups }}
{{- if and (hasKey . "idleTimeoutSeconds") (not (kindIs "invalid" .idleTimeoutSeconds)) }}
{{- if not $rs.enableInTreeAutoscaling }}
{{- fail (printf "rayService.workerGroups %s: idleTimeoutSeconds needs the Ray autoscaler (rayService.enableInTreeAutoscaling)" .groupName) }}
{{- end }}
{{- if ne $rs.autoscalerOptions.version "v2" }}
{{- fail (printf "rayService.workerGroups %s: idleTimeoutSeconds needs autoscaler v2, and KubeRay rejects the RayService without it: set rayService.autoscalerOptions.version v2, or drop it (autoscalerOptions.idleTimeoutSeconds applies to every group)" .groupName) }}
{{- end }}
{{- end }}
{{- end }}
{{- $upgrade := $rs.upgradeStrategy }}
{{- $options := $upgrade.clusterUpgradeOptions | default dict }}
{{- if eq $upgrade.type "NewClusterWithIncrementalUpgrade" }}
{{- if not $rs.enableInTreeAutoscaling }}
{{- fail "rayService.upgradeStrategy NewClusterWithIncrementalUpgrade needs the Ray autoscaler (rayService.enableInTreeAutoscaling): KubeRay scales the new cluster up step by step" }}
{{- end }}
{{- range $key := list "gatewayClassName" "stepSizePercent" "intervalSeconds" }}
{{- if not (get $options $key) }}
{{- fail (printf "rayService.upgradeStrategy NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions.%s (KubeRay rejects the RayService without it)" $key) }}
{{- end }}
{{- end }}
{{- if gt (int $options.stepSizePercent) (int ($options.maxSurgePercent | default 100)) }}
{{- fail "rayService.upgradeStrategy.clusterUpgradeOptions: stepSizePercent must not exceed maxSurgePercent" }}
{{- end }}
{{- else if $options }}
{{- fail (printf "rayService.upgradeStrategy.clusterUpgradeOptions are for NewClusterWithIncrementalUpgrade, not %s" $upgrade.type) }}
{{- end }}
{{- /* Ingress replicas (one per node) and CPU-only models run on CPU worker groups: GPU nodes hold their engine only. */}}
{{- $cpuNodes := 0 }}
{{- range (include "paddock.workerGroups" . | fromYaml).groups }}
{{- if not (include "paddock.requestsGpus" .resources) }}
{{- $cpuNodes = add $cpuNodes (int .maxReplicas) }}
{{- end }}
{{- end }}
{{- if lt $cpuNodes (int .Values.ingress.replicas) }}
{{- $cpuOnly := include "paddock.cpuOnlyModels" . }}
{{- fail (printf "ingress.replicas %d needs as many CPU worker nodes (one ingress per node; GPU workers hold their model only), but the CPU groups of rayService.workerGroups reach %d (maxReplicas)%s: add or grow a group without nvidia.com/gpu" (int .Values.ingress.replicas) $cpuNodes (ternary (printf "; they also run the CPU-only models %s" $cpuOnly) "" (ne $cpuOnly ""))) }}
{{- end }}
{{- end }}

{{/* The audit log fits its volume: retention's total plus one open segment per ingress process of a pod. */}}
{{- define "paddock.validateAudit" -}}
{{- if .Values.governance.enabled }}
{{- $audit := .Values.governance.audit }}
{{- $file := include "paddock.mebibytes" $audit.maxFileSize | int64 }}
{{- $total := include "paddock.mebibytes" $audit.maxTotalSize | int64 }}
{{- if and (gt $file 0) (gt $total 0) (lt $total (mul 2 $file)) }}
{{- fail (printf "governance.audit.maxTotalSize (%v) must be at least twice maxFileSize (%v): retention keeps the open segment and at least one closed one" $audit.maxTotalSize $audit.maxFileSize) }}
{{- end }}
{{- $pvc := .Values.state.persistentVolumeClaim }}
{{- $volume := "" }}
{{- if not (include "paddock.stateClaimed" .) }}
{{- $volume = .Values.state.emptyDirSizeLimit }}
{{- else if and $pvc.create (not $pvc.existingClaim) }}
{{- $volume = $pvc.size }}
{{- end }}
{{- if $volume }}
{{- /* ingress processes per pod: standalone runs every ingress replica in its pod unless max_replicas_per_node caps it; a Ray node one */}}
{{- $writers := 1 }}
{{- if eq .Values.mode "standalone" }}
{{- $writers = int .Values.ingress.replicas }}
{{- with .Values.ingress.max_replicas_per_node }}{{ $writers = min $writers (int .) }}{{ end }}
{{- end }}
{{- $where := ternary "state.emptyDirSizeLimit" "state.persistentVolumeClaim.size" (not (include "paddock.stateClaimed" .)) }}
{{- if eq $total 0 }}
{{- fail (printf "governance.audit.maxTotalSize 0 (no retention) would let the audit log fill %s (%v) until the pod is evicted: set a total (e.g. 1Gi) and ship the records from stdout" $where $volume) }}
{{- end }}
{{- $limit := include "paddock.mebibytes" $volume | int64 }}
{{- $needed := add $total (mul $writers $file) }}
{{- if gt (mul $needed 10) (mul $limit 9) }}
{{- fail (printf "governance.audit: maxTotalSize (%v) plus an open segment (maxFileSize %v) for each of the pod's %d ingress processes needs %d Mi, over 90%% of %s (%v): lower them, or raise %s" $audit.maxTotalSize $audit.maxFileSize $writers $needed $where $volume $where) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Ray worker pods' grace period: rayService.workerDrain.terminationGracePeriodSeconds, else terminationGracePeriodSeconds.
*/}}
{{- define "paddock.workerGracePeriod" -}}
{{- $own := .Values.rayService.workerDrain.terminationGracePeriodSeconds }}
{{- kindIs "invalid" $own | ternary .Values.terminationGracePeriodSeconds $own | int }}
{{- end }}

{{/*
The worker preStop's drain deadline (paddock node drain --deadline-s): the grace period less what Ray's own stop keeps.
*/}}
{{- define "paddock.workerDrainDeadline" -}}
{{- sub (int (include "paddock.workerGracePeriod" .)) (int .Values.rayService.workerDrain.rayStopSeconds) }}
{{- end }}
