#!/bin/sh
# OpenSearch's snapshot repository in S3 and its ISM and SM policies, from the JSON files next to this script.
# `configure.sh --check` exits 0 when they are already in place as these files say (the files' SHA-256 recorded
# by the last successful run, and each object present in OpenSearch): the stage's guard.
# The calls go from the node to the Service's cluster IP; the admin password (OPENSEARCH_PASSWORD, from the
# task's env) reaches curl through a config on stdin (`-K -`), never its arguments.
set -eu
export KUBECONFIG={{ kubeconfig }}
api={{ manifests }}/opensearch/api
record=/var/lib/kubeboot/opensearch-api.sha256
ip=$(kubectl -n logging get service opensearch-cluster-master -o jsonpath='{.spec.clusterIP}')
os() {
  method=$1; path=$2; shift 2
  printf 'user = "admin:%s"\n' "$OPENSEARCH_PASSWORD" |
    curl -sS -K - -X "$method" -H 'Content-Type: application/json' "$@" "http://$ip:9200$path"
}

if [ "${1:-}" = --check ]; then
  sha256sum -c --status "$record" 2>/dev/null
  for path in /_snapshot/logs-s3 /_plugins/_ism/policies/logs-lifecycle /_plugins/_sm/policies/logs-archive; do
    os GET "$path" --fail -o /dev/null 2>/dev/null
  done
  exit 0
fi

os GET /_cluster/health | grep -Eq '"status":"(green|yellow)"'
# checked: repository-s3 settings bucket/client/base_path/compress; the client "default" takes
#          s3.client.default.{endpoint,protocol,path_style_access,region} from opensearch.yml and its keys
#          from the keystore (S3ClientSettings)
os PUT /_snapshot/logs-s3 --fail --data-binary "@$api/snapshot-repository.json"
os POST /_snapshot/logs-s3/_verify --fail > /dev/null
# PATH FILE CREATE-METHOD: a policy created, or updated in place when it already exists (PUT with its
# seq_no/primary_term). ISM creates with PUT, SM with POST.
policy() {
  cur=$(os GET "$1" || true)
  seq=$(printf '%s' "$cur" | sed -n 's/.*"_seq_no":\([0-9]*\).*/\1/p')
  term=$(printf '%s' "$cur" | sed -n 's/.*"_primary_term":\([0-9]*\).*/\1/p')
  if [ -n "$seq" ] && [ -n "$term" ]; then
    os PUT "$1?if_seq_no=$seq&if_primary_term=$term" --fail --data-binary "@$2"
  else
    os "$3" "$1" --fail --data-binary "@$2"
  fi
}
policy /_plugins/_ism/policies/logs-lifecycle "$api/ism-policy.json" PUT
# SM: its deletion only looks at snapshots SM itself took (marked with the policy in their metadata)
# plus those matching deletion.snapshot_pattern; the ISM snapshot action names its snapshots
# logs-archive-<date>, so snapshot_pattern "logs-archive-*" (a pattern other than the policy's own
# "logs-archive*", which the plugin skips) makes the 180-day expiry cover them too.
# checked: index-management 3.3.0.0 snapshotmanagement/SMUtils.kt getSnapshots,
#          engine/states/deletion/DeletingState.kt, model/SMPolicy.kt (Deletion.snapshot_pattern),
#          indexstatemanagement/step/snapshot/AttemptSnapshotStep.kt (name = snapshot + "-" + date);
#          ISM policy fields: model/Policy.kt, State.kt, Transition.kt, ISMTemplate.kt
policy /_plugins/_sm/policies/logs-archive "$api/sm-policy.json" POST
# What --check compares with next time.
sha256sum "$api/snapshot-repository.json" "$api/ism-policy.json" "$api/sm-policy.json" > "$record.tmp"
mv "$record.tmp" "$record"
