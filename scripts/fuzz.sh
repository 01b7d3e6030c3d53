#!/usr/bin/env bash
# Runs every fuzz target (cargo-fuzz, libFuzzer) for SECONDS each (default 600) and appends the
# outcome to fuzz/RESULTS.md. Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain
# is used with RUSTC_BOOTSTRAP=1 because cargo-fuzz needs nightly-only sanitizer flags.
#
#   bash scripts/fuzz.sh            # 10 minutes per target
#   bash scripts/fuzz.sh 60         # a quick pass
#   bash scripts/fuzz.sh 600 template journal   # only these targets
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
results=fuzz/RESULTS.md
[ -f "$results" ] || printf '# Fuzzing results\n\n| date | target | seconds | runs | corpus | outcome |\n|---|---|---|---|---|---|\n' > "$results"
targets=(inventory playbook template journal)
[ $# -le 1 ] || targets=("${@:2}")
# Build first, so each target's SECONDS are spent fuzzing, not compiling.
cargo fuzz build
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  # The shipped inventory as it is today (a copy under fuzz/seeds went stale).
  [ "$target" != inventory ] || cp inventory.toml "$corpus/shipped.toml"
  log=$(mktemp)
  status=ok
  if ! cargo fuzz run "$target" "$corpus" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1; then
    status="FAILED (see fuzz/artifacts/$target)"
  fi
  # libFuzzer ends with "Done N runs in S second(s)"; a crash or hang ends earlier, at its last "#N" status line.
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  files=$(find "$corpus" -type f | wc -l)
  printf '| %s | %s | %s | %s | %s | %s |\n' "$(date -u +%F)" "$target" "$seconds" "${runs:-0}" "$files" "$status" | tee -a "$results"
  tail -3 "$log"
  rm -f "$log"
done
