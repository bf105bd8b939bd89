#!/usr/bin/env bash
# Fuzz every target with AFL++ (stable Rust, cargo-afl):
#   bash scripts/fuzz.sh [--seconds N] [--target NAME] [--out DIR]
# Each target runs N seconds (default 60) from its committed seed corpus
# (shared/fuzz/corpus/TARGET); a table of executions and crashes follows. Any crash
# is copied to shared/fuzz/regressions/TARGET/ (replayed by `cargo test`) and makes
# the script exit 1. Installs cargo-afl from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
only=""
out="${TMPDIR:-/tmp}/sloth-fuzz"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --target) only="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--target NAME] [--out DIR]" >&2; exit 2 ;;
  esac
done
targets="frame_decoder agent_task master_data"
[ -n "$only" ] && targets="$only"

if ! cargo afl --version >/dev/null 2>&1; then
  echo "installing cargo-afl (builds AFL++ from source)..."
  cargo install --locked cargo-afl --version 0.18.2 >/dev/null
fi
(cd shared/fuzz && cargo afl build --release --quiet)
bin=shared/fuzz/target/release

# AFL++ insists on these unless told the machine is as it is.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_NO_AFFINITY=1 AFL_FAST_CAL=1 AFL_SKIP_CRASHES=0

status=0
rows=()
for t in $targets; do
  dir="$out/$t"
  rm -rf "$dir"
  mkdir -p "$dir"
  timeout --kill-after=30 $((seconds + 60)) \
    cargo afl fuzz -V "$seconds" -i "shared/fuzz/corpus/$t" -o "$dir" "$bin/$t" \
    >"$dir.log" 2>&1 || { echo "afl-fuzz failed for $t:"; tail -20 "$dir.log"; exit 1; }
  stats="$dir/default/fuzzer_stats"
  execs=$(awk -F': *' '/^execs_done/ {print $2}' "$stats")
  speed=$(awk -F': *' '/^execs_per_sec/ {print $2}' "$stats")
  crashes=$(awk -F': *' '/^saved_crashes/ {print $2}' "$stats")
  hangs=$(awk -F': *' '/^saved_hangs/ {print $2}' "$stats")
  paths=$(awk -F': *' '/^corpus_count/ {print $2}' "$stats")
  rows+=("$(printf '%-14s %8ss %12s %10s %8s %8s %6s' "$t" "$seconds" "$execs" "$speed" "$paths" "$crashes" "$hangs")")
  if [ "${crashes:-0}" != 0 ]; then
    status=1
    mkdir -p "shared/fuzz/regressions/$t"
    for f in "$dir"/default/crashes/id:*; do
      [ -e "$f" ] || continue
      cp "$f" "shared/fuzz/regressions/$t/crash-$(sha256sum "$f" | cut -c1-16)"
    done
  fi
done
printf '%-14s %9s %12s %10s %8s %8s %6s\n' target time executions execs/s corpus crashes hangs
for r in "${rows[@]}"; do echo "$r"; done
if [ "$status" != 0 ]; then
  echo "crashes were found: copied to shared/fuzz/regressions/ (cargo test replays them)"
fi
exit "$status"
