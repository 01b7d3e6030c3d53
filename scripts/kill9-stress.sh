#!/usr/bin/env bash
# kill -9 stress: kubeboot is killed at random instants of a run (4 lab nodes, 4 stages x 8 tasks),
# then `apply` runs again to the end. Every trial checks that (a) every full journal line is JSON,
# (b) no task recorded done in the journal ran again (counted by side effects on the nodes), and
# (c) the final state is complete (every task ran). The table goes to scripts/kill9-results.md.
#
# Usage (as root, needs sshd and sudo): scripts/kill9-stress.sh [TRIALS]   (default 50)
# The trials themselves live in tests/faults_e2e.rs (`kill_9_at_random_moments...`, 5 trials in the suite).
set -euo pipefail

trials="${1:-50}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
results="$here/kill9-results.md"
table="$(mktemp)"
trap 'rm -f "$table"' EXIT

cd "$repo"
start=$(date +%s)
status=0
KUBEBOOT_KILL9_TRIALS="$trials" KUBEBOOT_KILL9_REPORT="$table" \
    cargo test --test faults_e2e kill_9_at_random_moments -- --exact \
    kill_9_at_random_moments_then_apply_completes_without_repeating_finished_tasks || status=$?
took=$(( $(date +%s) - start ))

if [ ! -s "$table" ]; then
    echo "kill9-stress: the trials did not run (cargo test exited $status)" >&2
    exit 1
fi
ok=$(grep -c '| ok |$' "$table" || true)
ran=$(grep -c '^| [0-9]' "$table" || true)
failed=$(( ran - ok ))
{
    echo "# kill -9 stress results"
    echo
    echo "Written by \`scripts/kill9-stress.sh $trials\` on $(date -u +%Y-%m-%dT%H:%M:%SZ)," \
         "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), in ${took}s (build included)."
    echo
    echo "Setup: 4 lab nodes (real sshd on 127.0.126.1-4), 4 stages x 8 tasks = 128 node-tasks; each task"
    echo "sleeps 20 ms and appends its name to the node's log. Each trial starts from an empty state dir,"
    echo "kills kubeboot with SIGKILL at a random instant within one whole run's duration, then runs"
    echo "\`apply\` again to the end and checks: (a) every full journal line parses as JSON (a torn last"
    echo "line is allowed and ignored), (b) no task recorded done in the journal started again nor left a"
    echo "second line, (c) every task of every node ran (final state complete)."
    echo
    echo "**Trials: $ran, passed: $ok, failures: $failed**"
    echo
    cat "$table"
} > "$results"
echo "kill9-stress: $ran trials, $failed failures; results in $results"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
