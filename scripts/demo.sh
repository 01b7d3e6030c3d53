#!/usr/bin/env bash
# The main job on a machine without real nodes: builds kubeboot, starts a local lab of real
# OpenSSH nodes on loopback addresses modelled on inventory.toml (same node names, clusters,
# vars), each node isolated (a private /etc, /var/lib, /usr/local, /opt, /root, /home and
# recording stand-ins for apt, dnf, systemctl, kubeadm, kubectl, ...), and runs the shipped
# playbooks on it with `kubeboot apply`: the terminal UI on a terminal, headless progress
# otherwise. This machine is not changed; the lab is stopped when this ends (unless
# KUBEBOOT_DEMO_KEEP=1).
#
#   bash scripts/demo.sh                                   # the shipped install on the lab
#   KUBEBOOT_DEMO_PLAYBOOKS=examples/playbooks bash scripts/demo.sh   # the small examples
#   KUBEBOOT_DEMO_ARGS="--yes --output plain" bash scripts/demo.sh    # extra `apply` flags
#   KUBEBOOT_DEMO_KEEP=1 bash scripts/demo.sh              # keep lab and progress: try resume
#
# stdout carries only what `kubeboot apply` prints (pure JSON lines with `--output json`); the
# demo's and the lab's own messages go to stderr. KUBEBOOT_BIN runs an already built binary
# instead of building one; KUBEBOOT_DEMO_STATE names the state folder (default .kubeboot-demo);
# KUBEBOOT_DEMO_FIRST_ADDRESS and KUBEBOOT_DEMO_FIRST_PORT move the lab (default 127.0.10.1:2201).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: the lab starts sshd on loopback, creates its login user and mounts private overlays: run as root" >&2
  exit 1
fi
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/bin/python3 ] || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "demo.sh: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -n "${KUBEBOOT_BIN:-}" ]; then
  bin=$KUBEBOOT_BIN
else
  cargo build --release --locked >&2
  bin=${CARGO_TARGET_DIR:-target}/release/kubeboot
fi
# Isolated nodes see /root, /home, /opt, ... privately, so the lab lives under /tmp.
lab=${KUBEBOOT_DEMO_LAB:-/tmp/kubeboot-demo-lab}
state=${KUBEBOOT_DEMO_STATE:-.kubeboot-demo}
playbooks=${KUBEBOOT_DEMO_PLAYBOOKS:-playbooks}

# The shipped inventory reads these secrets from the environment; the lab gets throwaway ones.
random() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9'; }
for name in KUBEBOOT_S3_ACCESS_KEY KUBEBOOT_S3_SECRET_KEY KUBEBOOT_GRAFANA_ADMIN_PASSWORD KUBEBOOT_OPENSEARCH_ADMIN_PASSWORD; do
  if [ -z "${!name:-}" ]; then
    export "$name=$(random)"
  fi
done

lab_args=(--dir "$lab" --isolated --like inventory.toml
  --first-address "${KUBEBOOT_DEMO_FIRST_ADDRESS:-127.0.10.1}" --first-port "${KUBEBOOT_DEMO_FIRST_PORT:-2201}")
# One node looks like RHEL 9 and one has containerd 1.7, so both code paths of the playbooks run.
grep -q '"node-196"' inventory.toml && lab_args+=(--rhel node-196)
grep -q '"node-197"' inventory.toml && lab_args+=(--containerd-1-7 node-197)
if [ "${KUBEBOOT_DEMO_KEEP:-0}" = 1 ]; then
  # Keep the lab and the progress between runs: interrupt a run, then run again to see it resume.
  if ! out=$("$bin" lab up "${lab_args[@]}" 2>&1); then
    grep -q "already running" <<<"$out" || { echo "$out" >&2; exit 1; }
    echo "demo.sh: reusing the lab running in $lab (stop it with: $bin lab down --dir $lab)" >&2
  else
    echo "$out" >&2
    rm -rf "$state" # a new lab: nothing of it was done yet
  fi
else
  # A new lab starts from scratch, and so does the progress recorded for it.
  "$bin" lab down --dir "$lab" >/dev/null 2>&1 || true
  rm -rf "$state"
  "$bin" lab up "${lab_args[@]}" >&2
  trap '"$bin" lab down --dir "$lab" >/dev/null 2>&1 || true' EXIT
fi

# shellcheck disable=SC2086 # KUBEBOOT_DEMO_ARGS is a list of flags
"$bin" -i "$lab/inventory.toml" -p "$playbooks" --state-dir "$state" apply ${KUBEBOOT_DEMO_ARGS:-}
