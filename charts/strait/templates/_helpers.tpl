{{/* Common labels. */}}
{{- define "strait.labels" -}}
app.kubernetes.io/part-of: strait
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "strait.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "strait.agentImage" -}}
{{ .Values.agent.image.repository }}:{{ .Values.agent.image.tag | default .Chart.AppVersion }}
{{- end -}}


{{/* The agent's pod settings as the one JSON flag the operator parses into Kubernetes types. */}}
{{- define "strait.agentPodOptions" -}}
{{- $o := dict "nodeSelector" .Values.agent.nodeSelector "imagePullSecrets" .Values.imagePullSecrets -}}
{{- if hasKey .Values.agent "resources" }}{{ $_ := set $o "resources" .Values.agent.resources }}{{ end -}}
{{- if hasKey .Values.agent "tolerations" }}{{ $_ := set $o "tolerations" .Values.agent.tolerations }}{{ end -}}
{{- with .Values.agent.priorityClassName }}{{ $_ := set $o "priorityClassName" . }}{{ end -}}
{{- toJson $o -}}
{{- end -}}
