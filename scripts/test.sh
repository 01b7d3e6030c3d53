#!/usr/bin/env bash
# The whole test suite, from a new machine: installs what the tests need (as root), then runs
# formatting and lint checks, every Rust test (unit, golden, end to end against real sshd nodes
# on loopback; the offline checks of the shipped playbooks and assets are tests/shipped_checks.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v dash >/dev/null 2>&1 || need+=(dash)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
# The distribution registry the bundle's image test pulls from (on loopback).
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
# apt-ftparchive: the bundle's flat apt repository (and the package test's loopback repository).
command -v apt-ftparchive >/dev/null 2>&1 || need+=(apt-utils)
# rpmbuild and createrepo_c: the dnf bundle test's loopback repositories of real .rpms (createrepo_c also
# writes the bundle's own dnf repository).
command -v rpmbuild >/dev/null 2>&1 || need+=(rpm)
command -v createrepo_c >/dev/null 2>&1 || need+=(createrepo-c)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: missing ${need[*]}; run as root or install them: apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "test.sh: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! python3 -c 'import moto.server' 2>/dev/null; then
  # moto is the S3 server of the bucket tests.
  python3 -m pip install --quiet 'moto[server]'
fi
# tests/shipped_checks.rs and tests/day_two.rs run `kubectl kustomize` (offline); they fail without kubectl.
command -v kubectl >/dev/null 2>&1 || echo "test.sh: kubectl is missing; tests/shipped_checks.rs and tests/day_two.rs will fail" >&2
if [ "$(id -u)" != 0 ]; then
  # The lab starts sshd on loopback addresses and creates its login user: that needs root.
  echo "test.sh: the SSH lab tests need root (they start sshd and create the lab user)" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
echo "== SSH benchmark smoke run (4 lab hosts, W1, kubeboot and the single-shell floor)"
cargo build --locked --quiet --bin kubeboot --bin kubeboot-node
KUBEBOOT="${CARGO_TARGET_DIR:-target}/debug/kubeboot" bash benches/ssh/smoke.sh
