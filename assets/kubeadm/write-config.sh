# Writes /etc/kubernetes/kubeadm-config.yaml for {{ node.name }} (cluster {{ cluster.name }}) from
# kubeadm-config.yaml beside it (rendered by kubeboot), with kubernetesVersion the exact version of the installed
# kubeadm, and validates it. `--check` writes nothing: exit 0 when the file on the node is already what it would
# write (the task's guard, so that a finished node skips it), 1 otherwise.
set -eu
conf=/etc/kubernetes/kubeadm-config.yaml
check=false
[ "${1:-}" = --check ] && check=true
# kubernetesVersion must match the installed kubeadm exactly; with no pinned patch it is read from kubeadm.
{% if kubernetes_package_version %}
kv='v{{ kubernetes_package_version }}'
{% else %}
kv="$(kubeadm version -o short 2>/dev/null || true)"
{% endif %}
case "$kv" in
  v{{ kubernetes_version }}.*) ;;
  *)
    "$check" && exit 1
    echo "kubeadm reports version '$kv', expected v{{ kubernetes_version }}.x: run the kubernetes stage first" >&2
    exit 1
    ;;
esac
new="$(mktemp)"
trap 'rm -f "$new"' EXIT
sed "s/@KUBERNETES_VERSION@/$kv/" /etc/kubernetes/kubeboot/kubeadm-config.yaml > "$new"
if [ -f "$conf" ] && cmp -s "$new" "$conf"; then
  "$check" && exit 0
  echo "unchanged: $conf"
else
  "$check" && exit 1
  cat "$new" > "$conf"
  chmod 0644 "$conf"
  echo "written: $conf (kubernetesVersion $kv)"
fi
kubeadm config validate --config "$conf"
