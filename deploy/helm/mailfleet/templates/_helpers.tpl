{{/* Names, labels and the pod pieces every service shares. */}}

{{- define "mailfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "mailfleet.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "mailfleet.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mailfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailfleet
{{- end -}}

{{/* Selector labels of one service: call with (dict "root" $ "component" "dispatcher"). */}}
{{- define "mailfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mailfleet.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) | quote }}
{{- end -}}

{{- define "mailfleet.secretName" -}}
{{- default (printf "%s-secrets" (include "mailfleet.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Environment of every mailfleet container. */}}
{{- define "mailfleet.envFrom" -}}
- configMapRef:
    name: {{ include "mailfleet.fullname" . }}-config
- secretRef:
    name: {{ include "mailfleet.secretName" . }}
{{- end -}}

{{/* Restart pods when their configuration changes. */}}
{{- define "mailfleet.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{- define "mailfleet.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
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

{{/* ----- security (issue 12): the Kafka CA file, mounted from security.kafka.caSecret ----- */}}
{{- define "mailfleet.kafkaCaFile" -}}
/etc/mailfleet/kafka-ca/ca.crt
{{- end -}}

{{- define "mailfleet.securityVolumeMounts" -}}
{{- if .Values.security.kafka.caSecret }}
- {name: kafka-ca, mountPath: /etc/mailfleet/kafka-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "mailfleet.securityVolumes" -}}
{{- if .Values.security.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.security.kafka.caSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end -}}
