{{/* The pod spec of a worker pool, or of a multi-node job's pods:
(dict "root" $ "pool" $pool [ "gpus" N "command" list "extraEnv" list ]). Without "command" it runs a
worker for the pool's queues. */}}
{{- define "papertrain.workerPodSpec" -}}
{{- $root := .root }}
{{- $pool := .pool }}
{{- $gpus := int (.gpus | default $pool.gpus | default 0) }}
serviceAccountName: {{ include "papertrain.fullname" $root }}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ $pool.terminationGracePeriodSeconds | default 120 }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: worker
    image: {{ include "papertrain.image" (dict "root" $root "image" $pool.image) }}
    imagePullPolicy: {{ $pool.image.pullPolicy | default "IfNotPresent" }}
    command:
      {{- toYaml (.command | default (list "papertrain" "worker")) | nindent 6 }}
    env:
      {{- include "papertrain.env" $root | nindent 6 }}
      # where the other workers of a job over several machines reach this one when it is node 0
      - name: PAPERTRAIN_NODE_ADDRESS
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
      {{- with $pool.queues }}
      - name: PAPERTRAIN_WORKER_QUEUES
        value: {{ join "," . | quote }}
      {{- end }}
      {{- with .extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    envFrom:
      {{- include "papertrain.envFrom" $root | nindent 6 }}
    {{- if not .command }}
    # No liveness probe: the worker is the container's main process, and a database or broker outage
    # must not restart a worker in the middle of a job. Readiness shows whether it can take jobs.
    readinessProbe:
      exec:
        command: [python, -m, worker.health]
      periodSeconds: 30
      timeoutSeconds: 15
      failureThreshold: 3
    {{- end }}
    resources:
      {{- $resources := deepCopy ($pool.resources | default dict) }}
      {{- if gt $gpus 0 }}
      {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" $gpus) ($resources.limits | default dict)) }}
      {{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" $gpus) ($resources.requests | default dict)) }}
      {{- end }}
      {{- toYaml $resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      {{- include "papertrain.volumeMounts" $root | nindent 6 }}
      - name: shm
        mountPath: /dev/shm
volumes:
  {{- include "papertrain.volumes" $root | nindent 2 }}
  # NCCL and data-loader workers share memory through /dev/shm; the container default is 64 MB.
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $pool.shmSize | default "1Gi" }}
{{- with $pool.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pool.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pool.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
