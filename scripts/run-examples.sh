#!/usr/bin/env bash
# Runs every example on a local fleet and checks its output and exit code.
# Usage: scripts/run-examples.sh [BIN_DIR]   (default: target/debug)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/debug}/sloth-master"
pass=0
fail=0

check() { # name expected_exit grep_pattern... -- command...
  local name=$1 want=$2; shift 2
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  local out code
  out=$(timeout 300 "$@" 2>&1); code=$?
  local ok=1
  [ "$code" = "$want" ] || ok=0
  for p in "${patterns[@]}"; do
    grep -qE -- "$p" <<<"$out" || { ok=0; echo "  missing: $p"; }
  done
  if [ $ok = 1 ]; then
    echo "example ok: $name"; pass=$((pass+1))
  else
    echo "example FAILED: $name (exit $code, wanted $want)"; echo "$out" | tail -n 40; fail=$((fail+1))
  fi
}

check hello_fleet 0 "6/6 hosts answered" "web-01 +-> hello from web-01 \(frontend\)" "RECAP" -- \
  "$BIN" run examples/hello_fleet.sloth -i examples/fleet.toml --local-fleet

for f in examples/*.sloth; do
  case "$(basename "$f")" in hello_fleet.sloth) continue;; esac
  # Every other example declares its expectations in its header:
  #   -- expect-exit: N        -- expect: REGEX        -- args: extra CLI args
  want=$(sed -n 's/^-- expect-exit: *//p' "$f" | head -n1); want=${want:-0}
  mapfile -t pats < <(sed -n 's/^-- expect: *//p' "$f")
  args=$(sed -n 's/^-- args: *//p' "$f" | head -n1)
  # shellcheck disable=SC2086
  check "$(basename "$f")" "$want" "${pats[@]}" -- "$BIN" run "$f" $args
done

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
