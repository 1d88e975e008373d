{{/* Names ------------------------------------------------------------------------------- */}}
{{- define "recsys.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "recsys.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "recsys.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "recsys.image" -}}
{{- $img := .root.Values.image -}}
{{- $repo := printf "%s%s" $img.prefix .component -}}
{{- if $img.registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" $img.registry) $repo -}}{{- end -}}
{{- printf "%s:%s" $repo (toString $img.tag) -}}
{{- end -}}

{{/* Redis ------------------------------------------------------------------------------- */}}
{{/* REDIS_URL as rendered into the ConfigMap; "" when it comes from a Secret. Fails on a
     missing or malformed value: the services would otherwise start without Redis (SQLite
     online store, no /events), which is never what a cluster install wants. */}}
{{- define "recsys.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- if $r.existingSecret -}}
{{- else if eq $r.mode "standalone" -}}
{{- $url := required "redis.url is required with redis.mode=standalone (e.g. redis://redis-master:6379/0), or set redis.existingSecret" $r.url -}}
{{- if not (or (hasPrefix "redis://" $url) (hasPrefix "rediss://" $url)) -}}
{{- fail (printf "redis.url must start with redis:// or rediss:// for redis.mode=standalone, got %q (a cluster: redis.mode=cluster + redis.nodes)" $url) -}}
{{- end -}}
{{- $url -}}
{{- else if eq $r.mode "cluster" -}}
{{- if not $r.nodes -}}
{{- fail "redis.nodes is required with redis.mode=cluster: a list of host:port seed nodes, or set redis.existingSecret to a Secret holding the redis+cluster:// URL" -}}
{{- end -}}
{{- range $r.nodes -}}
{{- if or (contains "/" .) (contains "," .) (not (contains ":" .)) -}}
{{- fail (printf "redis.nodes entries are host:port, got %q" .) -}}
{{- end -}}
{{- end -}}
{{- printf "redis+cluster://%s" (join "," $r.nodes) -}}
{{- else -}}
{{- fail (printf "redis.mode must be standalone or cluster, got %q" $r.mode) -}}
{{- end -}}
{{- end -}}

{{/* Secrets ------------------------------------------------------------------------------ */}}
{{- define "recsys.adminTokenSecret" -}}
{{- $t := .Values.gateway.adminToken -}}
{{- if $t.existingSecret -}}{{ $t.existingSecret }}{{- else -}}{{ include "recsys.fullname" . }}-admin-token{{- end -}}
{{- end -}}

{{- define "recsys.adminTokenKey" -}}
{{- $t := .Values.gateway.adminToken -}}
{{- if $t.existingSecret -}}{{ $t.existingSecretKey }}{{- else -}}admin-token{{- end -}}
{{- end -}}

{{/* Checks that do not belong to one object; included once by configmap.yaml. */}}
{{- define "recsys.validate" -}}
{{- $t := .Values.gateway.adminToken -}}
{{- if and (not $t.existingSecret) (not $t.value) -}}
{{- fail "gateway.adminToken: set gateway.adminToken.existingSecret (a Secret with key gateway.adminToken.existingSecretKey) or gateway.adminToken.value (at least 16 characters, e.g. --set gateway.adminToken.value=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')); the chart ships no default token" -}}
{{- end -}}
{{- if and $t.value (lt (len $t.value) 16) -}}
{{- fail "gateway.adminToken.value is shorter than 16 characters: the gateway refuses such a token outside GATEWAY_ENVIRONMENT=dev" -}}
{{- end -}}
{{- $b := .Values.bundle -}}
{{- if eq $b.source "url" -}}
{{- if and (not $b.url) (not $b.urlSecret.name) -}}
{{- fail "bundle.source=url needs bundle.url (an http(s) tar.gz of one bundle version folder) or bundle.urlSecret.name" -}}
{{- end -}}
{{- if not $b.registryUrl -}}
{{- fail "bundle.source=url needs bundle.registryUrl: the services read their feature views from the Feast registry (registry.db) that the materialising pipeline wrote; it is not part of the bundle" -}}
{{- end -}}
{{- if .Values.offlineJob.enabled -}}
{{- fail "offlineJob.enabled=true needs bundle.source=volume: the Job writes the bundle and the Feast registry into the claims the pods mount. With bundle.source=url the pipeline that uploads the bundle also materialises; set offlineJob.enabled=false" -}}
{{- end -}}
{{- else if ne $b.source "volume" -}}
{{- fail (printf "bundle.source must be volume or url, got %q" $b.source) -}}
{{- end -}}
{{- end -}}

{{/* Pod parts ---------------------------------------------------------------------------- */}}
{{- define "recsys.podSpecCommon" -}}
serviceAccountName: {{ include "recsys.fullname" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Spread replicas over nodes and zones when possible (never blocks scheduling). */}}
{{- define "recsys.spread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "recsys.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "recsys.selectorLabels" . | nindent 8 }}
{{- end -}}

{{- define "recsys.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.gateway.adminToken.existingSecret }}
checksum/admin-token: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* env shared by every Python container: settings from the ConfigMap, REDIS_URL from a Secret
     when one is named. (dict "root" $ "component" "retrieval") */}}
{{- define "recsys.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "recsys.fullname" .root }}
env:
  - name: OTEL_SERVICE_NAME
    value: {{ .component }}
  {{- if .root.Values.redis.existingSecret }}
  - name: REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ .root.Values.redis.existingSecret }}
        key: {{ .root.Values.redis.existingSecretKey }}
  {{- end }}
{{- end -}}

{{- define "recsys.securityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{- define "recsys.preStop" -}}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.preStopSleepSeconds }}"]
{{- end -}}

{{/* Volumes of a serving pod: /tmp, the bundle, the Feast data dir, the fetch script. */}}
{{- define "recsys.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if eq .Values.bundle.source "volume" }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ .Values.bundle.volume.artifacts.existingClaim | default (printf "%s-artifacts" (include "recsys.fullname" .)) }}
    readOnly: true
- name: data
  persistentVolumeClaim:
    claimName: {{ .Values.bundle.volume.data.existingClaim | default (printf "%s-data" (include "recsys.fullname" .)) }}
    readOnly: true
{{- else }}
- name: artifacts
  emptyDir:
    sizeLimit: {{ .Values.bundle.sizeLimit }}
- name: data
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
- name: scripts
  configMap:
    name: {{ include "recsys.fullname" . }}-scripts
    defaultMode: 0555
{{- end -}}

{{- define "recsys.mounts" -}}
- name: tmp
  mountPath: /tmp
- name: artifacts
  mountPath: /app/artifacts
  readOnly: true
- name: data
  mountPath: /app/data
  readOnly: true
{{- end -}}

{{/* The init container that makes the bundle available before the service starts:
     url: fetch + verify it into the emptyDir; volume: wait for the offline Job's marker.
     Same image as the pod (its Python runs the stdlib-only script). */}}
{{- define "recsys.bundleInit" -}}
{{- $root := .root -}}
{{- $b := $root.Values.bundle -}}
- name: bundle
  image: {{ include "recsys.image" . }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  {{- if eq $b.source "url" }}
  command: ["python", "/scripts/fetch_bundle.py", "fetch", "--dest", "/app/artifacts",
            "--registry-dest", "/app/data/feast/registry.db"]
  env:
    {{- if $b.urlSecret.name }}
    - name: BUNDLE_URL
      valueFrom:
        secretKeyRef:
          name: {{ $b.urlSecret.name }}
          key: {{ $b.urlSecret.key }}
    {{- else }}
    - name: BUNDLE_URL
      value: {{ $b.url | quote }}
    {{- end }}
    - name: BUNDLE_SHA256
      value: {{ $b.sha256 | quote }}
    - name: REGISTRY_URL
      value: {{ $b.registryUrl | quote }}
    - name: REGISTRY_SHA256
      value: {{ $b.registrySha256 | quote }}
  {{- else }}
  command: ["python", "/scripts/fetch_bundle.py", "wait", "--artifacts", "/app/artifacts",
            "--marker", "/app/data/.recsys-materialized"]
  {{- end }}
  {{- include "recsys.securityContext" $root | nindent 2 }}
  resources:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {cpu: 500m, memory: 256Mi}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: artifacts
      mountPath: /app/artifacts
      readOnly: {{ eq $b.source "volume" }}
    - name: data
      mountPath: /app/data
      readOnly: {{ eq $b.source "volume" }}
    - name: scripts
      mountPath: /scripts
      readOnly: true
{{- end -}}
