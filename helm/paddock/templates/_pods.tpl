{{/*
What every Paddock pod is made of besides its environment: the image it runs, its disk requests,
the demo image's model-cache seeding, and the autoscaler's service-account token.
*/}}

{{/* Ids of the models with an `embedded` source, comma-separated (empty: none). */}}
{{- define "paddock.embeddedModels" -}}
{{- $ids := list }}
{{- range (include "paddock.models" . | fromYaml).models }}
{{- if hasKey (.source | default dict) "embedded" }}
{{- $ids = append $ids .id }}
{{- end }}
{{- end }}
{{- join ", " $ids }}
{{- end }}

{{/* Ids of the models that use no GPU (resources.gpus 0), comma-separated (empty: none). */}}
{{- define "paddock.cpuOnlyModels" -}}
{{- $ids := list }}
{{- range (include "paddock.models" . | fromYaml).models }}
{{- if eq (include "paddock.modelGpus" . | float64) 0.0 }}
{{- $ids = append $ids .id }}
{{- end }}
{{- end }}
{{- join ", " $ids }}
{{- end }}

{{/* What image.* is: cpu or cpu-demo (image.variant; empty: cpu-demo when a model is embedded). */}}
{{- define "paddock.imageVariant" -}}
{{- if .Values.image.variant -}}
{{ .Values.image.variant }}
{{- else if include "paddock.embeddedModels" . -}}
cpu-demo
{{- else -}}
cpu
{{- end }}
{{- end }}

{{/* The image of pods without GPUs: repository:tag (<appVersion>-<variant>), or repository@digest. */}}
{{- define "paddock.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion (include "paddock.imageVariant" .)) }}
{{- end }}
{{- end }}

{{/* The image of pods that request GPUs (the CUDA engine): <appVersion>-cuda by default. */}}
{{- define "paddock.gpuImage" -}}
{{- $repository := .Values.gpuImage.repository | default .Values.image.repository }}
{{- if .Values.gpuImage.digest -}}
{{ $repository }}@{{ .Values.gpuImage.digest }}
{{- else -}}
{{ $repository }}:{{ .Values.gpuImage.tag | default (printf "%s-cuda" .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" when container resources ask for GPUs (nvidia.com/gpu in requests or limits), else "". */}}
{{- define "paddock.requestsGpus" -}}
{{- $r := . | default dict }}
{{- $requested := get ($r.requests | default dict) "nvidia.com/gpu" | default 0 }}
{{- $limited := get ($r.limits | default dict) "nvidia.com/gpu" | default 0 }}
{{- if or (gt (int $requested) 0) (gt (int $limited) 0) -}}
true
{{- end }}
{{- end }}

{{/* The image for a pod with these resources (dict root, resources). */}}
{{- define "paddock.podImage" -}}
{{- if include "paddock.requestsGpus" .resources -}}
{{ include "paddock.gpuImage" .root }}
{{- else -}}
{{ include "paddock.image" .root }}
{{- end }}
{{- end }}

{{/* A Kubernetes quantity (20Gi, 500M, bytes) in MiB, rounded up. */}}
{{- define "paddock.mebibytes" -}}
{{- $quantity := toString . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $quantity }}
{{- $suffix := trimPrefix $number $quantity }}
{{- $factors := dict "" 0.00000095367431640625 "Ki" 0.0009765625 "Mi" 1.0 "Gi" 1024.0 "Ti" 1048576.0 "K" 0.00095367431640625 "M" 0.95367431640625 "G" 953.67431640625 "T" 953674.31640625 }}
{{- if or (not $number) (not (hasKey $factors $suffix)) }}
{{- fail (printf "%q: not a quantity the chart can add up (e.g. 20Gi, 500Mi)" $quantity) }}
{{- end }}
{{- ceil (mulf (float64 $number) (get $factors $suffix)) | int64 }}
{{- end }}

{{/* A quantity in bytes (whole mebibytes, rounded up; "0" stays 0), as the PADDOCK_AUDIT_* settings take it. */}}
{{- define "paddock.bytes" -}}
{{- mul (include "paddock.mebibytes" . | int64) 1048576 }}
{{- end }}

{{/* Whether the model cache / the state directory is a claim (else an emptyDir): "true" or "". */}}
{{- define "paddock.cacheClaimed" -}}
{{- if or .Values.modelCache.persistentVolumeClaim.create .Values.modelCache.persistentVolumeClaim.existingClaim }}true{{ end }}
{{- end }}
{{- define "paddock.stateClaimed" -}}
{{- $pvc := .Values.state.persistentVolumeClaim }}
{{- if and (eq .Values.mode "standalone") (or $pvc.create $pvc.existingClaim) }}true{{ end }}
{{- end }}

{{/* The disk every Paddock container may write: /tmp plus the cache and state emptyDirs, as a quantity. */}}
{{- define "paddock.scratch" -}}
{{- $mi := include "paddock.mebibytes" .Values.tmp.sizeLimit | int64 }}
{{- if not (include "paddock.cacheClaimed" .) }}
{{- $mi = add $mi (include "paddock.mebibytes" .Values.modelCache.emptyDirSizeLimit | int64) }}
{{- end }}
{{- if not (include "paddock.stateClaimed" .) }}
{{- $mi = add $mi (include "paddock.mebibytes" .Values.state.emptyDirSizeLimit | int64) }}
{{- end }}
{{- if eq (mod $mi 1024) 0 }}{{ div $mi 1024 }}Gi{{ else }}{{ $mi }}Mi{{ end }}
{{- end }}

{{/* Container resources with an ephemeral-storage request for the emptyDirs (dict root, resources), unless set. */}}
{{- define "paddock.withScratch" -}}
{{- $resources := deepCopy (.resources | default dict) }}
{{- $requests := get $resources "requests" | default dict }}
{{- if not (hasKey $requests "ephemeral-storage") }}
{{- $_ := set $requests "ephemeral-storage" (include "paddock.scratch" .root) }}
{{- end }}
{{- $_ := set $resources "requests" $requests }}
{{- toYaml $resources }}
{{- end }}

{{/* The demo image's own cache directory (the Dockerfile's PADDOCK_CACHE_DIR), where `paddock prepare` put its models. */}}
{{- define "paddock.imageCacheDir" -}}/var/cache/paddock{{- end }}

{{/*
The demo image's models, seeded into the model-cache volume that hides them (an init container of
pods on image.*, when it is the demo image). Each model folder the cache lacks is copied into a
staging folder of its own beside its place and renamed into it, so an interrupted copy never looks
prepared and pods sharing a ReadWriteMany cache cannot clash (the first rename wins); a folder
already there is left alone (a persistent cache keeps what it has). Stagings over an hour old are
interrupted copies, and removed.
*/}}
{{- define "paddock.seedInitContainers" -}}
{{- if eq (include "paddock.imageVariant" .) "cpu-demo" }}
- name: seed-model-cache
  image: {{ include "paddock.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - python
    - -c
    - |
      import os, pathlib, shutil, sys, tempfile, time
      source, cache = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
      for stale in cache.glob(".seed-*"):
          if time.time() - stale.stat().st_mtime > 3600:
              shutil.rmtree(stale, ignore_errors=True)
      for entry in sorted(source.iterdir()):
          target = cache / entry.name
          if not entry.is_dir() or entry.name.startswith(".") or target.exists():
              continue
          staging = pathlib.Path(tempfile.mkdtemp(prefix=f".seed-{entry.name}-", dir=cache))
          try:
              shutil.copytree(entry, staging / entry.name, symlinks=True)
              os.rename(staging / entry.name, target)
              print(f"seeded {target} from the image")
          except OSError:
              if not target.is_dir():
                  raise
          finally:
              shutil.rmtree(staging, ignore_errors=True)
    - {{ include "paddock.imageCacheDir" . }}
    - /seed/model-cache
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    requests: {cpu: 100m, memory: 128Mi}
    limits: {memory: 1Gi}
  volumeMounts:
    - name: model-cache
      mountPath: /seed/model-cache
{{- end }}
{{- end }}

{{/*
The Ray head's service-account token, for the autoscaler sidecar only: the pod does not automount
one, this projected volume (what the kubelet would mount) goes into the autoscaler's container alone.
*/}}
{{- define "paddock.autoscalerTokenVolume" -}}
- name: autoscaler-kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                fieldPath: metadata.namespace
{{- end }}
