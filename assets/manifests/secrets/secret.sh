#!/bin/sh
# The Secrets of stage 70, one group per call: `secret.sh NAME` applies it, `secret.sh NAME --check` exits 0
# when the cluster already holds it as written (kubectl diff: 0 no difference, 1 a difference, above 1 an
# error), which is the stage's guard, so `apply --fresh` on a finished cluster leaves them alone.
# The values come from the environment only (the task's env:) and reach kubectl on stdin, through the printf
# builtin: never an argument, never a file (a here-document would be a temporary file under bash < 5.1).
set -eu
export KUBECONFIG={{ kubeconfig }}
name=$1
mode=${2:-apply}

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

# NAME NAMESPACE: a Secret's head, up to its data.
header() {
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n' "$1" "$2"
  printf '  labels: {app.kubernetes.io/managed-by: kubeboot}\ntype: Opaque\ndata:\n'
}

render() {
  case "$1" in
    # objstore.yml for every Thanos component: MinIO over plain HTTP on port 80, path-style.
    # checked: thanos v0.39.2 docs/storage.md S3 config (bucket, endpoint host:port, region, insecure,
    #          bucket_lookup_type auto|virtual-hosted|path, access_key, secret_key)
    thanos-objstore)
      case "$S3_ACCESS_KEY$S3_SECRET_KEY" in
        *'"'*|*'\'*) echo "S3 keys with a double quote or backslash cannot go into objstore.yml" >&2; return 1 ;;
      esac
      objstore="type: S3
config:
  bucket: {{ s3_bucket_thanos }}
  endpoint: {{ s3_host }}:80
  region: {{ s3_region }}
  insecure: true
  bucket_lookup_type: path
  access_key: \"$S3_ACCESS_KEY\"
  secret_key: \"$S3_SECRET_KEY\"
"
      header thanos-objstore monitoring
      printf '  objstore.yml: %s\n' "$(b64 "$objstore")"
      ;;
    longhorn-s3-secret)
      header longhorn-s3-secret longhorn-system
      printf '  AWS_ACCESS_KEY_ID: %s\n' "$(b64 "$S3_ACCESS_KEY")"
      printf '  AWS_SECRET_ACCESS_KEY: %s\n' "$(b64 "$S3_SECRET_KEY")"
      printf '  AWS_ENDPOINTS: %s\n' "$(b64 '{{ s3_endpoint }}')"
      printf '  VIRTUAL_HOSTED_STYLE: %s\n' "$(b64 false)"
      ;;
    # Every cluster's Fluent Bit logs in to the central OpenSearch.
    fluent-bit-opensearch)
      header fluent-bit-opensearch logging
      printf '  password: %s\n' "$(b64 "$OPENSEARCH_PASSWORD")"
      ;;
    # OpenSearch loads each key of its keystore Secret into its keystore (repository-s3 credentials).
    opensearch)
      header opensearch-s3-keystore logging
      printf '  s3.client.default.access_key: %s\n' "$(b64 "$S3_ACCESS_KEY")"
      printf '  s3.client.default.secret_key: %s\n' "$(b64 "$S3_SECRET_KEY")"
      printf -- '---\n'
      header opensearch-admin logging
      printf '  password: %s\n' "$(b64 "$OPENSEARCH_PASSWORD")"
      ;;
    grafana-admin)
      header grafana-admin monitoring
      printf '  admin-user: %s\n' "$(b64 admin)"
      printf '  admin-password: %s\n' "$(b64 "$GRAFANA_PASSWORD")"
      ;;
    *) echo "secret.sh: no Secret named '$1'" >&2; return 2 ;;
  esac
}

manifest=$(render "$name")
if [ "$mode" = --check ]; then
  printf '%s\n' "$manifest" | kubectl diff --server-side --force-conflicts -f - > /dev/null
else
  printf '%s\n' "$manifest" | kubectl apply --server-side --force-conflicts -f -
fi
