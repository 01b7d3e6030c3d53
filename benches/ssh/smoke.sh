#!/usr/bin/env bash
# CI smoke test of the SSH benchmark: 4 lab hosts, W1 (50 × `true` per host), 1 run, kubeboot and the
# single-shell floor only, no PyPI. Takes well under a minute once kubeboot is built. Exits non-zero,
# with kubeboot's output, if kubeboot fails or does not run every task.
#
#   bash benches/ssh/smoke.sh          # KUBEBOOT=path/to/kubeboot skips the build
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

[ "$(id -u)" = 0 ] || { echo "smoke.sh: needs root (the lab creates the user kblab and runs sshd)" >&2; exit 2; }
if [ -z "${KUBEBOOT:-}" ]; then
    (cd "$repo" && cargo build --quiet --bin kubeboot --bin kubeboot-node)
    KUBEBOOT="${CARGO_TARGET_DIR:-$repo/target}/debug/kubeboot"
fi
# bench.py runs kubeboot from its own work folders: a relative path would not resolve there.
KUBEBOOT=$(realpath "$KUBEBOOT")
[ -x "$KUBEBOOT" ] || { echo "smoke.sh: no kubeboot binary at $KUBEBOOT" >&2; exit 2; }

work=$(mktemp -d /tmp/kubeboot-bench-smoke.XXXXXX)
chmod 711 "$work"
# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() {
    for lab in "$work"/lab-*; do
        [ -d "$lab" ] && "$KUBEBOOT" lab down --dir "$lab" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
# Bounded: a hung run is killed by bench.py's own per-run limit, and the whole smoke by this one.
if ! timeout --kill-after=10 120 python3 "$here/bench.py" --kubeboot "$KUBEBOOT" --workdir "$work" \
        --sizes 4 --runs 1 --workloads W1 --tools kubeboot,floor \
        --variants "kubeboot;floor: one ssh, one shell" --lab-base 110 --run-timeout 60; then
    echo "smoke.sh: FAILED — kubeboot (or the lab) did not complete W1 on 4 loopback hosts; see above" >&2
    exit 1
fi
echo "smoke.sh: ok in $((SECONDS - start)) s" >&2
