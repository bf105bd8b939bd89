#!/usr/bin/env bash
# Soak test of a fleet pool under random churn:
#   bash scripts/soak.sh [--tasks N] [--agents A] [--kills K] [--seconds S] [--bin DIR]
# Starts A real agents on 127.0.0.1 (fresh CA in a temporary directory), runs N small
# tasks through one fleet pool, and meanwhile makes K random events spread over the
# first S seconds: SIGKILL (restarted on the same address 2-5 s later), SIGSTOP (woken
# 4-6 s later) or an immediate restart. Then prints a table: tasks, results, missing,
# wrong, duplicated, re-queued, retried, failed, wall time. Exits 1 if any result is
# missing, wrong, duplicated or failed.
# Uses the release binaries in target/release (built if missing; --bin DIR for others).
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=100000
agents=10
kills=10
seconds=20
bin=target/release
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) tasks="$2"; shift 2 ;;
    --agents) agents="$2"; shift 2 ;;
    --kills) kills="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "usage: $0 [--tasks N] [--agents A] [--kills K] [--seconds S] [--bin DIR]" >&2; exit 2 ;;
  esac
done
if [ ! -x "$bin/sloth-master" ] || [ ! -x "$bin/sloth-agent" ]; then
  cargo build --release --quiet
  bin=target/release
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/sloth-soak.XXXXXX")
export SLOTH_STATE_DIR="${SLOTH_STATE_DIR:-$work/state}"
declare -a pids addrs names
cleanup() {
  # Agents restarted by the churn subshell are known by their pid files.
  for f in "$work"/pid-*; do
    [ -e "$f" ] || continue
    p=$(cat "$f")
    kill -CONT "$p" 2>/dev/null || true
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/sloth-master" certs init --dir "$work/certs" >/dev/null
start_agent() { # index, listen address
  local i=$1 listen=$2 name=${names[$1]}
  "$bin/sloth-agent" --listen "$listen" --name "$name" --cert "$work/certs/$name.crt" \
    --key "$work/certs/$name.key" --ca "$work/certs/ca.crt" --audit-log "$work/$name.audit.log" \
    >"$work/$name.out" 2>>"$work/$name.log" &
  pids[$i]=$!
  echo "$!" >"$work/pid-$i"
  disown "$!"
  local line=""
  for _ in $(seq 1 200); do
    line=$(head -n1 "$work/$name.out" 2>/dev/null || true)
    [ -n "$line" ] && break
    sleep 0.05
  done
  addrs[$i]=${line##* }
}
: >"$work/inventory.toml"
for i in $(seq 0 $((agents - 1))); do
  names[$i]=$(printf 'soak-%02d' $((i + 1)))
  "$bin/sloth-master" certs issue "${names[$i]}" --dir "$work/certs" >/dev/null
  start_agent "$i" 127.0.0.1:0
  printf '[hosts.%s]\naddress = "%s"\ngroups = ["soak"]\n\n' "${names[$i]}" "${addrs[$i]}" >>"$work/inventory.toml"
done

cat >"$work/soak.sloth" <<EOF
assert(goroutine.pool_create("soak", { delegate_to = "soak", workers = $((agents * 8)), retries = 20 }))
local N = $tasks
for i = 1, N do
  assert(goroutine.pool_submit("soak", function(x) return x end, i))
end
goroutine.pool_close("soak")
local ok, res = goroutine.pool_wait("soak", "1h")
local seen, missing, wrong, dup, failed = {}, 0, 0, 0, 0
for i = 1, N do
  local r = res[i]
  if r == nil then missing = missing + 1
  elseif not r.success then failed = failed + 1
  else
    local v = r.values[1]
    if v ~= i then wrong = wrong + 1 end
    if seen[v] then dup = dup + 1 end
    seen[v] = true
  end
end
local st = goroutine.pool_stats("soak")
print("SOAK", #res, missing, wrong, dup, st.requeued, st.retried, failed)
EOF

# Start again the agents whose restart is due (marked by a file).
restart_due() {
  for f in "$work"/restart-*; do
    [ -e "$f" ] || continue
    local j=${f##*-}
    rm -f "$f"
    start_agent "$j" "${addrs[$j]}"
  done
}

# Churn: K random events over the first S seconds.
churn() {
  local gap_ms=$(( seconds * 1000 / (kills + 1) ))
  for _ in $(seq 1 "$kills"); do
    sleep "$(awk -v ms=$gap_ms -v r=$RANDOM 'BEGIN { printf "%.3f", ms * (0.5 + r / 32768) / 1000 }')"
    local i=$(( RANDOM % agents )) what=$(( RANDOM % 3 ))
    local p=${pids[$i]}
    case $what in
      0) kill -9 "$p" 2>/dev/null || true
         echo "kill ${names[$i]}" >>"$work/events"
         ( sleep $(( 2 + RANDOM % 4 )); echo restart >"$work/restart-$i" ) & ;;
      1) kill -STOP "$p" 2>/dev/null || true
         echo "stop ${names[$i]}" >>"$work/events"
         ( sleep $(( 4 + RANDOM % 3 )); kill -CONT "$p" 2>/dev/null || true ) & ;;
      2) kill -9 "$p" 2>/dev/null || true; sleep 0.2
         echo "restart ${names[$i]}" >>"$work/events"
         echo restart >"$work/restart-$i" ;;
    esac
    restart_due
  done
  # Restarts still due after the last event.
  sleep 6
  restart_due
}

: >"$work/events"
start=$(date +%s.%N)
churn &
churner=$!
set +e
"$bin/sloth-master" run "$work/soak.sloth" -i "$work/inventory.toml" --certs "$work/certs" \
  >"$work/master.out" 2>"$work/master.err"
code=$?
set -e
end=$(date +%s.%N)
wait "$churner" 2>/dev/null || true
line=$(grep '^SOAK' "$work/master.out" || true)
if [ -z "$line" ]; then
  echo "the soak script did not finish (exit $code):"; tail -20 "$work/master.out" "$work/master.err"
  exit 1
fi
read -r _ results missing wrong dup requeued retried failed <<<"$(echo "$line" | tr '\t' ' ')"
events=$(wc -l <"$work/events" 2>/dev/null || echo 0)
printf '%-10s %-8s %-8s %-8s %-6s %-10s %-10s %-8s %-8s %-8s %-8s\n' \
  tasks results missing wrong dup requeued retried failed events wall_s exit
printf '%-10s %-8s %-8s %-8s %-6s %-10s %-10s %-8s %-8s %-8s %-8s\n' \
  "$tasks" "$results" "$missing" "$wrong" "$dup" "$requeued" "$retried" "$failed" "$events" \
  "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')" "$code"
echo "events: $(tr '\n' ';' <"$work/events" 2>/dev/null)"
[ "$missing" = 0 ] && [ "$wrong" = 0 ] && [ "$dup" = 0 ] && [ "$failed" = 0 ] && [ "$results" = "$tasks" ]
