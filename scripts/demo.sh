#!/usr/bin/env bash
# The main job on a machine without real nodes: builds kubeboot, starts a local lab of real
# OpenSSH nodes on loopback addresses, and runs `kubeboot apply` against it — the terminal UI
# when run on a terminal, headless progress otherwise. The lab is stopped when this ends.
#
#   bash scripts/demo.sh            # the example playbooks on 4 lab nodes
#   KUBEBOOT_DEMO_ARGS="--yes" bash scripts/demo.sh   # extra arguments for `apply`
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: the lab starts sshd on loopback and creates its login user: run as root" >&2
  exit 1
fi
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --locked
bin=target/release/kubeboot
lab=.lab
state=.kubeboot-demo
"$bin" lab down --dir "$lab" >/dev/null 2>&1 || true
"$bin" lab up --dir "$lab" --nodes 4
trap '"$bin" lab down --dir "$lab" >/dev/null 2>&1 || true' EXIT

# shellcheck disable=SC2086 # KUBEBOOT_DEMO_ARGS is a list of flags
"$bin" -i "$lab/inventory.toml" -p examples/playbooks --state-dir "$state" apply ${KUBEBOOT_DEMO_ARGS:-}
