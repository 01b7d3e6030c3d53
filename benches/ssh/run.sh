#!/usr/bin/env bash
# The side-by-side SSH orchestration benchmark, from a fresh machine, in one command:
#
#   bash benches/ssh/run.sh            # N = 4, 32, 128; W1..W3; every tool; both sshd profiles; 3 runs; writes README.md
#   bash benches/ssh/run.sh --quick    # N = 4, 1 run, the lab's sshd profile only
#   bash benches/ssh/run.sh --sizes 32 --workloads W1 --tools kubeboot,floor   # any bench.py option
#
# Needs root (the lab creates its user and runs sshd), openssh-server, sudo, python3 with venv, cargo.
# Environment: KUBEBOOT=path skips the build; BASELINE=path also runs that kubeboot binary beside it
# (before/after a change); KUBEBOOT_BENCH_VENV=dir picks the peers' venv; KEEP_WORKDIR=1 keeps the
# generated playbooks and outputs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

# The peers, pinned: the versions PyPI served for Python 3.11 when this benchmark was written.
ANSIBLE_CORE_VERSION=2.19.14
PYINFRA_VERSION=3.10.0

quick=0
pass=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) pass+=("$arg") ;;
    esac
done

die() { echo "run.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root: the lab creates the user kblab and runs sshd"
for tool in ssh python3 sudo; do command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y openssh-client openssh-server sudo python3-venv)"; done
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null || die "sshd is missing (apt-get install -y openssh-server)"

# 128 sshd + 128 client connections + ssh masters: more descriptors than the usual 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -z "${KUBEBOOT:-}" ]; then
    echo "== building kubeboot (release)" >&2
    (cd "$repo" && cargo build --release --quiet --bin kubeboot --bin kubeboot-node)
    KUBEBOOT="${CARGO_TARGET_DIR:-$repo/target}/release/kubeboot"
fi
[ -x "$KUBEBOOT" ] || die "no kubeboot binary at $KUBEBOOT"

venv=${KUBEBOOT_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeboot-bench/venv}
installed() {  # the version of a package in the venv, or nothing
    "$venv/bin/python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p' || true
}
if [ ! -x "$venv/bin/ansible-playbook" ] || [ ! -x "$venv/bin/pyinfra" ] ||
   [ "$(installed ansible-core)" != "$ANSIBLE_CORE_VERSION" ] || [ "$(installed pyinfra)" != "$PYINFRA_VERSION" ]; then
    echo "== installing ansible-core $ANSIBLE_CORE_VERSION and pyinfra $PYINFRA_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "ansible-core==$ANSIBLE_CORE_VERSION" "pyinfra==$PYINFRA_VERSION"
fi
echo "== peers: $("$venv/bin/python" -V), ansible-core $(installed ansible-core), pyinfra $(installed pyinfra)" >&2

work=$(mktemp -d /tmp/kubeboot-bench.XXXXXX)
chmod 711 "$work"
# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() {
    # bench.py tears its labs down itself; this catches a bench.py that was killed outright.
    for lab in "$work"/lab-*; do
        [ -d "$lab" ] && "$KUBEBOOT" lab down --dir "$lab" >/dev/null 2>&1 || true
    done
    if [ "${KEEP_WORKDIR:-0}" = 1 ]; then echo "work folder kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

args=(--kubeboot "$KUBEBOOT" --venv "$venv" --workdir "$work" --json "${RESULTS_JSON:-$work.json}")
if [ -n "${BASELINE:-}" ]; then
    [ -x "$BASELINE" ] || die "no kubeboot binary at BASELINE=$BASELINE"
    args+=(--baseline "$BASELINE")
fi
if [ "$quick" = 1 ]; then
    args+=(--sizes 4 --runs 1)
else
    args+=(--write-readme --profiles lab,lean)
fi
status=0
python3 "$here/bench.py" "${args[@]}" "${pass[@]}" || status=$?
echo "raw results: ${RESULTS_JSON:-$work.json}" >&2
exit "$status"
