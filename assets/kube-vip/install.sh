# Installs kube-vip's static pod for {{ node.name }} (cluster {{ cluster.name }}, vip {{ cluster.vip | default('') }}),
# rendered by kubeboot. Kubernetes >= 1.29 gives admin.conf no rights until kubeadm init has finished, so the
# first control plane mounts super-admin.conf while it initialises and admin.conf from then on (kube-vip issue
# #684); the others join first and use admin.conf. With --check it writes nothing and exits 0 when the static pod
# is already what it would write (the tasks' guard), 1 when not.
set -eu
check=false
if [ "${1:-}" = --check ]; then check=true; fi
conf=/etc/kubernetes/admin.conf
first_control_plane='{{ node.first_control_plane | lower }}'
if [ "$first_control_plane" = true ] && [ ! -f /etc/kubernetes/admin.conf ]; then
  conf=/etc/kubernetes/super-admin.conf
fi
new="$(mktemp)"
trap 'rm -f "$new"' EXIT
sed "s#@KUBECONFIG@#$conf#" /etc/kubernetes/kube-vip/kube-vip.yaml > "$new"
if [ "$check" = true ]; then
  cmp -s "$new" /etc/kubernetes/manifests/kube-vip.yaml
  exit
fi
install -d -m 0755 /etc/kubernetes/manifests
if cmp -s "$new" /etc/kubernetes/manifests/kube-vip.yaml; then
  echo "unchanged: /etc/kubernetes/manifests/kube-vip.yaml (kubeconfig $conf)"
else
  install -m 0600 "$new" /etc/kubernetes/manifests/kube-vip.yaml
  echo "written: /etc/kubernetes/manifests/kube-vip.yaml (kubeconfig $conf)"
fi
