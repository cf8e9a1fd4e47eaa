{{/* Names: <release>-papertrain unless the release name already says papertrain; 40 characters at most
so that pool and index suffixes stay within Kubernetes' 63. */}}
{{- define "papertrain.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "papertrain.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "api") */}}
{{- define "papertrain.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "papertrain.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "papertrain.fullname" .)) -}}
{{- end -}}

{{- define "papertrain.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Values.imageTag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* The settings every pod gets: the ConfigMap plus the two connection URLs from the Secret. */}}
{{- define "papertrain.env" -}}
- name: PAPERTRAIN_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "papertrain.secretName" . }}, key: database-url}
- name: PAPERTRAIN_BROKER_URL
  valueFrom:
    secretKeyRef: {name: {{ include "papertrain.secretName" . }}, key: broker-url}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ include "papertrain.secretName" . }}, key: mlflow-tracking-username, optional: true}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "papertrain.secretName" . }}, key: mlflow-tracking-password, optional: true}
{{- end -}}

{{- define "papertrain.envFrom" -}}
- configMapRef:
    name: {{ include "papertrain.fullname" . }}-config
{{- end -}}

{{/* The shared volume, /tmp (the root filesystem is read-only) and the datasets, as volumes. */}}
{{- define "papertrain.volumes" -}}
- name: data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim | default (printf "%s-data" (include "papertrain.fullname" .)) }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{- with .Values.datasets }}
- name: datasets
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "papertrain.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.persistence.mountPath }}
- name: tmp
  mountPath: /tmp
{{- if .Values.datasets }}
- name: datasets
  mountPath: /data/datasets
  readOnly: true
{{- end }}
{{- end -}}
