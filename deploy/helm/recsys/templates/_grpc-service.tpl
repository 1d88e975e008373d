{{/* Deployment + Services of a gRPC service (retrieval, ranking):
     (dict "root" $ "component" "retrieval" "port" 50051 "metricsPort" 9101 "grpcService" "recsys.v1.RetrievalService") */}}
{{- define "recsys.grpcService" -}}
{{- $root := .root -}}
{{- $c := index $root.Values .component -}}
{{- $full := include "recsys.fullname" $root -}}
{{- $sel := dict "root" $root "component" .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $full }}-{{ .component }}
  labels:
    {{- include "recsys.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "recsys.selectorLabels" $sel | nindent 6 }}
  strategy:
    type: RollingUpdate
    # A new pod loads and warms its bundle before it counts; never drop below the current count.
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels:
        {{- include "recsys.selectorLabels" $sel | nindent 8 }}
      annotations:
        {{- include "recsys.podAnnotations" $root | nindent 8 }}
        prometheus.io/scrape: "true"
        prometheus.io/port: "{{ .metricsPort }}"
    spec:
      {{- include "recsys.podSpecCommon" $root | nindent 6 }}
      {{- include "recsys.spread" $sel | nindent 6 }}
      terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
      initContainers:
        {{- include "recsys.bundleInit" $sel | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "recsys.image" $sel }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          {{- include "recsys.env" $sel | nindent 10 }}
          ports:
            - {name: grpc, containerPort: {{ .port }}, protocol: TCP}
            - {name: metrics, containerPort: {{ .metricsPort }}, protocol: TCP}
          # The metrics/status HTTP server starts before the bundle is loaded, the gRPC health
          # service says NOT_SERVING until it is loaded and warmed: startup and liveness are
          # "the process answers" (HTTP /status), readiness is gRPC health SERVING for the proto
          # service (grpc.health.v1, the name common/grpc_server.py registers), which also goes
          # NOT_SERVING on SIGTERM.
          startupProbe:
            httpGet: {path: /status, port: metrics}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: {{ div $c.startupSeconds 5 }}
          livenessProbe:
            httpGet: {path: /status, port: metrics}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            grpc: {port: {{ .port }}, service: {{ .grpcService }}}
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          {{- include "recsys.preStop" $root | nindent 10 }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          {{- include "recsys.securityContext" $root | nindent 10 }}
          volumeMounts:
            {{- include "recsys.mounts" $root | nindent 12 }}
      volumes:
        {{- include "recsys.volumes" $root | nindent 8 }}
---
# For people and Prometheus: one stable address (the gateway uses the headless one below).
apiVersion: v1
kind: Service
metadata:
  name: {{ $full }}-{{ .component }}
  labels:
    {{- include "recsys.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  type: ClusterIP
  selector:
    {{- include "recsys.selectorLabels" $sel | nindent 4 }}
  ports:
    - {name: grpc, port: {{ .port }}, targetPort: grpc, protocol: TCP, appProtocol: grpc}
    - {name: metrics, port: {{ .metricsPort }}, targetPort: metrics, protocol: TCP}
---
# Headless: DNS answers with every ready pod's IP, for the gateway's round_robin gRPC channel.
apiVersion: v1
kind: Service
metadata:
  name: {{ $full }}-{{ .component }}-headless
  labels:
    {{- include "recsys.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  clusterIP: None
  selector:
    {{- include "recsys.selectorLabels" $sel | nindent 4 }}
  ports:
    - {name: grpc, port: {{ .port }}, targetPort: grpc, protocol: TCP, appProtocol: grpc}
{{- end -}}
