#!/usr/bin/env bash
# Network-fault tests on real links: two sloth agents, each in its own network
# namespace behind a veth pair, and the master in the root namespace. Faults are
# made with the kernel's own tools (this kernel has no `tc netem`):
#   link down/up (ip link), random packet loss (nftables numgen on ingress),
#   bandwidth cap (tc tbf), silent peer (nftables drops everything inbound).
#
# Usage (as root):  bash scripts/netfault.sh [BIN_DIR]     (default: target/debug)
# Prints one `ok: ...` or `FAILED: ...` line per check; exits 1 if any check failed,
# 2 if the test bed could not be set up. See docs/network-faults.md.
#
# Everything it creates is removed on exit, however it exits (trap), and anything a
# previous, killed run left behind is removed first:
#   namespaces sloth-a1 sloth-a2 (and the processes in them), root-side veths
#   sl-a1 sl-a2, blackhole routes 10.77.{1,2}.0/24 metric 4242, nftables table
#   `netdev sloth_netfault` in the root namespace, the work directory.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN_DIR=${1:-target/debug}
NS=(sloth-a1 sloth-a2)
VETH=(sl-a1 sl-a2)              # root-side ends; the namespace side is called eth0
ROOT_IP=(10.77.1.1 10.77.2.1)
AGENT_IP=(10.77.1.2 10.77.2.2)
NAMES=(a1 a2)
PORT=7447
ROUTE_METRIC=4242               # our blackhole routes (see setup)
ROOT_NFT_TABLE=sloth_netfault   # netdev table in the root namespace
T0=$EPOCHREALTIME

fail=0
pass=0
WORK=""
PIDS=()                         # processes this script started (agents, masters)

ok() { echo "ok: $*"; pass=$((pass + 1)); }
failed() { echo "FAILED: $*"; fail=$((fail + 1)); }
# Indented excerpt of a file, for a failure's context.
show() { local f; for f in "$@"; do [ -f "$f" ] && { echo "  --- $f"; tail -n 30 "$f" | sed 's/^/  | /'; }; done; }
now() { echo "$EPOCHREALTIME"; }
# Seconds between two $EPOCHREALTIME values, 2 decimals.
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# Is A < B (decimal numbers)?
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# Is PID alive and running sloth-master/-agent, `timeout ... sloth-master`, or this script?
ours() { grep -qaE 'sloth|netfault' "/proc/$1/cmdline" 2>/dev/null && ! grep -q '^[^)]*) [ZX]' "/proc/$1/stat"; }
cleanup() {
  local p ns i
  [ -n "$WORK" ] && for p in $(cat "$WORK"/*.pid 2>/dev/null); do PIDS+=("$p"); done
  # (a pid is signalled only while it still runs one of ours: no stray kill after reuse)
  for p in "${PIDS[@]}"; do ours "$p" && kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do ours "$p" || break; sleep 0.1; done
    ours "$p" && kill -9 "$p" 2>/dev/null
  done
  # Whatever is still inside our namespaces: agents of a previous run that was killed.
  for ns in "${NS[@]}"; do
    ip netns list 2>/dev/null | grep -qw "^$ns" || continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  for ns in "${NS[@]}"; do
    ip netns list 2>/dev/null | grep -qw "^$ns" && ip netns del "$ns" 2>/dev/null
  done
  for i in 0 1; do
    ip link show "${VETH[$i]}" >/dev/null 2>&1 && ip link del "${VETH[$i]}" 2>/dev/null
    ip route del blackhole "${ROOT_IP[$i]%.*}.0/24" metric "$ROUTE_METRIC" 2>/dev/null
  done
  command -v nft >/dev/null && nft delete table netdev "$ROOT_NFT_TABLE" 2>/dev/null
  if [ -n "$WORK" ]; then
    if [ -n "${NETFAULT_KEEP:-}" ]; then echo "netfault: kept $WORK"; else rm -rf "$WORK"; fi
  fi
  return 0
}
on_exit() {
  local code=$?
  trap - EXIT INT TERM
  cleanup
  exit "$code"
}

setup_error() { echo "FAILED: setup: $*"; [ -n "$WORK" ] && show "$WORK"/*.log; exit 2; }

# --- preconditions -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "FAILED: setup: must run as root (network namespaces)"; exit 2; }
[ -x "$BIN_DIR/sloth-master" ] && [ -x "$BIN_DIR/sloth-agent" ] ||
  { echo "FAILED: setup: no sloth-master/sloth-agent in $BIN_DIR (run cargo build)"; exit 2; }
if ! command -v nft >/dev/null; then
  echo "installing nftables..."
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables; } >/dev/null 2>&1 ||
    { echo "FAILED: setup: could not install nftables"; exit 2; }
fi
command -v tc >/dev/null || { echo "FAILED: setup: no tc (iproute2)"; exit 2; }

# One run at a time (they share the namespaces and addresses). Long-lived children get
# `9>&-`, so that agents left behind by a killed run do not hold the lock.
exec 9>/tmp/sloth-netfault.lock
flock -n 9 || { echo "FAILED: setup: another scripts/netfault.sh is running"; exit 2; }
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Leftovers of a run that was killed (SIGKILL leaves no chance to clean up): agents in
# our namespaces, links, routes, nft tables, work directories. (A master it started
# ends by itself: `timeout 90`.)
cleanup
rm -rf /tmp/sloth-netfault.??????
WORK=$(mktemp -d /tmp/sloth-netfault.XXXXXX)
export SLOTH_STATE_DIR="${SLOTH_STATE_DIR:-$WORK/state}"
CERTS=$WORK/certs
INV=$WORK/inventory.toml
# Copies of the binaries: a `cargo build` running meanwhile (it replaces them) must not
# change or remove them under a run.
mkdir "$WORK/bin"
cp "$BIN_DIR/sloth-master" "$BIN_DIR/sloth-agent" "$WORK/bin/" || setup_error "copying the binaries"
MASTER=$WORK/bin/sloth-master
AGENT=$WORK/bin/sloth-agent
"$MASTER" --version >/dev/null && "$AGENT" --version >/dev/null || setup_error "the binaries in $BIN_DIR do not run"
export NO_COLOR=1
unset SLOTH_AGENT_BIN

# --- 1. setup ----------------------------------------------------------------------------
# Root namespace (master) <-> veth <-> namespace (agent), one pair per agent. A blackhole
# route per subnet (metric 4242, below the connected route) keeps packets for an agent
# whose link is down from following the default route out of this machine.
"$MASTER" certs init --dir "$CERTS" >"$WORK/certs.log" 2>&1 || setup_error "certs init"
{
  echo "[defaults]"
  echo "port = $PORT"
  echo
} >"$INV"
for i in 0 1; do
  ns=${NS[$i]} v=${VETH[$i]} name=${NAMES[$i]}
  ip netns add "$ns" || setup_error "ip netns add $ns"
  ip link add "$v" type veth peer name eth0 netns "$ns" || setup_error "veth $v"
  ip addr add "${ROOT_IP[$i]}/24" dev "$v" && ip link set "$v" up || setup_error "up $v"
  ip route add blackhole "${ROOT_IP[$i]%.*}.0/24" metric "$ROUTE_METRIC" || setup_error "blackhole route"
  ip -n "$ns" link set lo up &&
    ip -n "$ns" addr add "${AGENT_IP[$i]}/24" dev eth0 &&
    ip -n "$ns" link set eth0 up || setup_error "addresses in $ns"
  "$MASTER" certs issue "$name" --san "${AGENT_IP[$i]}" --dir "$CERTS" >>"$WORK/certs.log" 2>&1 ||
    setup_error "certs issue $name"
  mkdir -p "$WORK/cache-$name"
  ip netns exec "$ns" env SLOTH_CACHE_DIR="$WORK/cache-$name" "$AGENT" \
    --listen "${AGENT_IP[$i]}:$PORT" --cert "$CERTS/$name.crt" --key "$CERTS/$name.key" \
    --ca "$CERTS/ca.crt" --name "$name" --audit-log "$WORK/audit-$name.log" >"$WORK/agent-$name.out" 2>"$WORK/agent-$name.log" 9>&- &
  PIDS+=($!)
  disown $!                      # (no "Killed" notice from bash when cleanup stops it)
  printf '[hosts.%s]\naddress = "%s"\ngroups = ["net"]\n\n' "$name" "${AGENT_IP[$i]}" >>"$INV"
done
for name in "${NAMES[@]}"; do
  for _ in $(seq 100); do grep -q '"event":"ready"' "$WORK/agent-$name.out" && break; sleep 0.1; done
  grep -q '"event":"ready"' "$WORK/agent-$name.out" || setup_error "agent $name did not start"
done
ok "setup: namespaces ${NS[*]}, agents a1 (${AGENT_IP[0]}) and a2 (${AGENT_IP[1]}) listening"

# sloth-master run SCRIPT [ARGS...], stdout to OUT with each line prefixed by its arrival
# time ($EPOCHREALTIME, a tab), stderr to ERR; the exit code is the last line, "EXIT n".
# Runs in the background: RUN_PID is the process to wait for.
start_run() { # out err script [args...]
  local out=$1 err=$2; shift 2
  (
    timeout 90 "$MASTER" run "$@" -i "$INV" --certs "$CERTS" 2>"$err" &
    echo $! >"$out.pid"           # `timeout` passes a TERM on to the master (cleanup)
    wait $!
    echo "EXIT $?"
  ) 9>&- | while IFS= read -r line; do printf '%s\t%s\n' "$EPOCHREALTIME" "$line"; done >"$out" 9>&- &
  RUN_PID=$!
  PIDS+=($RUN_PID)
}
# Run to completion.
run() { start_run "$@"; wait "$RUN_PID"; }
# The exit code recorded in OUT.
exit_of() { sed -n 's/^[0-9.]*\tEXIT //p' "$1"; }
# The fields (after the time and the tag) of the first line of OUT tagged TAG.
field() { awk -F'\t' -v t="$2" -v n="$3" '$2 == t { print $(n + 2); exit }' "$1"; }
# Arrival time of the first line of OUT containing TEXT (empty when none yet).
time_of() { awk -F'\t' -v s="$2" 'index($0, s) { print $1; exit }' "$1"; }
# Wait (at most SECS) for a line of OUT containing TEXT.
wait_line() { # out text secs
  local end=$((SECONDS + $3))
  while [ $SECONDS -le $end ]; do
    [ -n "$(time_of "$1" "$2")" ] && return 0
    sleep 0.05
  done
  return 1
}

# --- 2. baseline ---------------------------------------------------------------------------
cat >"$WORK/baseline.sloth" <<'EOF'
local hs = {}
for _, name in ipairs(fleet.hosts("net")) do
  hs[#hs + 1] = goroutine.async(function() return host.name end, { delegate_to = name })
end
for _, r in ipairs(goroutine.await_all(hs, "20s")) do
  print("s2", r.host, tostring(r.success), tostring(r.success and r.values[1] or r.error))
end
EOF
run "$WORK/s2.out" "$WORK/s2.err" "$WORK/baseline.sloth"
if [ "$(exit_of "$WORK/s2.out")" = 0 ] &&
  grep -qP '\ts2\ta1\ttrue\ta1$' "$WORK/s2.out" && grep -qP '\ts2\ta2\ttrue\ta2$' "$WORK/s2.out"; then
  ok "baseline: a task on each agent returned its host.name (a1, a2)"
else
  failed "baseline: expected exit 0 and 's2 a1 true a1', 's2 a2 true a2'"; show "$WORK/s2.out" "$WORK/s2.err"
fi

# --- 3. link down mid-task -------------------------------------------------------------------
# a1's task prints a marker, then sleeps 20 s (and would leave a file behind if it ever
# finished); a2's task runs 9 s. When the marker arrives, a1's root-side veth goes down.
# The master must give up on a1 after its idle timeout (4 s) with agent_lost, a2's task
# must finish normally. The script then waits for the link to come back (a file this
# script creates) and runs a task on a1 again in the same process: the master redials.
ORPHAN=$WORK/a1-orphan-finished
LINK_BACK=$WORK/link-back
cat >"$WORK/linkdown.sloth" <<'EOF'
local orphan, link_back = vars.orphan, vars.link_back
local h1 = goroutine.async(function()
  print("s3-marker a1 running")
  goroutine.sleep(20000)
  fs.write(orphan, "the task on a1 ran to its end after its master was gone\n")
  return "a1 finished"
end, { delegate_to = "a1", name = "long" })
local h2 = goroutine.async(function()
  print("s3-marker a2 running")
  goroutine.sleep(9000)
  return host.name
end, { delegate_to = "a2", name = "steady" })
local ok1, err1 = h1:await()
print("s3-a1-await", tostring(ok1), tostring(err1))
local rs = goroutine.await_all({ h1, h2 }, "30s")
for _, r in ipairs(rs) do
  print("s3-result", r.host, tostring(r.success), tostring(r.kind),
        tostring(r.success and r.values[1] or r.error))
end
-- wait (on the master) for the link to come back, then use a1 again
goroutine.async(function()
  for _ = 1, 600 do
    if fs.exists(link_back) then return end
    goroutine.sleep(50)
  end
end):await()
local ok3, v3 = goroutine.async(function() return host.name end,
                                { delegate_to = "a1", name = "again" }):await()
print("s3-again", tostring(ok3), tostring(v3))
EOF
start_run "$WORK/s3.out" "$WORK/s3.err" "$WORK/linkdown.sloth" -e "orphan=$ORPHAN" -e "link_back=$LINK_BACK"
S3_RUN=$RUN_PID
if wait_line "$WORK/s3.out" "s3-marker a1 running" 20 && wait_line "$WORK/s3.out" "s3-marker a2 running" 5; then
  S3_TASK_START=$(time_of "$WORK/s3.out" "s3-marker a1 running")
  ip link set "${VETH[0]}" down
  T_DOWN=$(now)
  wait_line "$WORK/s3.out" "s3-a1-await" 30
  T_LOST=$(time_of "$WORK/s3.out" "s3-a1-await")
  ip link set "${VETH[0]}" up
  touch "$LINK_BACK"
  wait "$S3_RUN"
  out=$WORK/s3.out
  if [ -z "$T_LOST" ]; then
    failed "link down: the await on a1 did not return within 30 s of the link going down"; show "$out" "$WORK/s3.err"
  else
    took=$(secs "$T_DOWN" "$T_LOST")
    a1_err=$(field "$out" s3-a1-await 2)
    if [ "$(field "$out" s3-a1-await 1)" = false ] && [[ "$a1_err" == agent_lost:*a1* ]] && lt "$took" 6.5; then
      ok "link down: await on a1 returned false after ${took}s: $a1_err"
    else
      failed "link down: wanted 'false, agent_lost: a1: ...' within 6.5 s; got after ${took}s: $(field "$out" s3-a1-await 1) $a1_err"
      show "$out" "$WORK/s3.err"
    fi
  fi
  r1=$(awk -F'\t' '$2 == "s3-result" && $3 == "a1" { print $4, $5 }' "$out")
  r2=$(awk -F'\t' '$2 == "s3-result" && $3 == "a2" { print $4, $6 }' "$out")
  if [ "$r1" = "false agent_lost" ] && [ "$r2" = "true a2" ] && [ "$(exit_of "$out")" = 1 ]; then
    ok "link down: a2's task finished normally meanwhile (a1 kind agent_lost, a2 ok, exit code 1)"
  else
    failed "link down: wanted a1 'false agent_lost', a2 'true a2', exit 1; got a1 '$r1', a2 '$r2', exit $(exit_of "$out")"
    show "$out" "$WORK/s3.err"
  fi
  if [ "$(field "$out" s3-again 1)" = true ] && [ "$(field "$out" s3-again 2)" = a1 ]; then
    ok "link down: after the link came back the same master redialed a1 and ran a task on it"
  else
    failed "link down: after the link came back, a task on a1 failed: $(field "$out" s3-again 1) $(field "$out" s3-again 2)"
    show "$out" "$WORK/s3.err"
  fi
else
  S3_TASK_START=""
  failed "link down: the tasks did not start (no markers within 20 s)"; show "$WORK/s3.out" "$WORK/s3.err"
  ip link set "${VETH[0]}" up
  kill "$S3_RUN" 2>/dev/null
fi

# --- 4. packet loss ------------------------------------------------------------------------
# 5 % random drop on both ingresses of a1's link: in a1's namespace (master -> agent) and
# on the root-side veth (agent -> master). 200 small tasks through a fleet pool on a1 and
# a2, no retries: QUIC must recover every lost packet.
ip netns exec "${NS[0]}" nft -f - <<EOF || failed "packet loss: nft rule in ${NS[0]}"
table netdev sloth_loss {
  chain ingress {
    type filter hook ingress device "eth0" priority 0; policy accept;
    numgen random mod 100 < 5 counter drop
  }
}
EOF
nft -f - <<EOF || failed "packet loss: nft rule on ${VETH[0]}"
table netdev $ROOT_NFT_TABLE {
  chain loss_a1 {
    type filter hook ingress device "${VETH[0]}" priority 0; policy accept;
    numgen random mod 100 < 5 counter drop
  }
}
EOF
cat >"$WORK/loss.sloth" <<'EOF'
-- Each task takes ~1 KB and sends back ~2 KB, and sleeps 30 ms so that the pool
-- spreads the work evenly (a1 gets its share of the lossy link).
local N = 200
local function payload(n) return string.rep(string.char(65 + n % 26), 800 + n) end
assert(goroutine.pool_create("p", { delegate_to = "net", workers = 16, timeout = "60s" }))
for i = 1, N do
  goroutine.pool_submit("p", function(n, data)
    goroutine.sleep(30)
    return host.name, n, n * n, data .. data
  end, i, payload(i))
end
local _, results = goroutine.pool_wait("p")
local seen, per_host, bad = {}, { a1 = 0, a2 = 0 }, 0
for _, r in ipairs(results) do
  local v = r.values or {}
  local n = v[2]
  if r.success and type(n) == "number" and v[3] == n * n and not seen[n]
     and v[4] == payload(n) .. payload(n) and per_host[v[1]] then
    seen[n] = true
    per_host[v[1]] = per_host[v[1]] + 1
  else
    bad = bad + 1
    print("s4-bad", tostring(r.host), tostring(r.kind), tostring(r.error))
  end
end
local st = goroutine.pool_stats("p")
print("s4", #results, bad, per_host.a1, per_host.a2, st.retried)
EOF
t0=$(now)
run "$WORK/s4.out" "$WORK/s4.err" "$WORK/loss.sloth"
took=$(secs "$t0" "$(now)")
out=$WORK/s4.out
drops=$( { ip netns exec "${NS[0]}" nft list table netdev sloth_loss; nft list table netdev "$ROOT_NFT_TABLE"; } 2>/dev/null |
  awk '{ for (i = 1; i < NF; i++) if ($i == "packets") n += $(i + 1) } END { print n + 0 }')
read -r n bad c1 c2 retried <<<"$(awk -F'\t' '$2 == "s4" { print $3, $4, $5, $6, $7 }' "$out")"
if [ "$(exit_of "$out")" = 0 ] && [ "${n:-}" = 200 ] && [ "${bad:-}" = 0 ] && [ "${c1:-0}" -gt 0 ] && [ "${c2:-0}" -gt 0 ] &&
  [ "${drops:-0}" -gt 0 ]; then
  ok "packet loss 5%: 200/200 pool tasks right (a1 $c1, a2 $c2, retried $retried, $drops packets dropped, ${took}s)"
else
  failed "packet loss 5%: wanted exit 0, 200 tasks, 0 bad, both hosts used, drops > 0; got exit $(exit_of "$out"), tasks ${n:-?}, bad ${bad:-?}, a1 ${c1:-?}, a2 ${c2:-?}, drops ${drops:-?}"
  show "$out" "$WORK/s4.err"
fi
ip netns exec "${NS[0]}" nft delete table netdev sloth_loss 2>/dev/null
nft delete table netdev "$ROOT_NFT_TABLE" 2>/dev/null

# --- 5. bandwidth cap ------------------------------------------------------------------------
# 8 Mbit/s on the root-side veth of a1 (the master -> agent direction). A 4 MiB artifact
# must arrive intact and take at least 2 s (4 MiB at 1 MB/s is ~4.2 s), at most 30 s.
tc qdisc add dev "${VETH[0]}" root tbf rate 8mbit burst 32kbit latency 400ms ||
  failed "bandwidth cap: tc qdisc add tbf on ${VETH[0]}"
cat >"$WORK/bandwidth.sloth" <<'EOF'
local size = 4 * 1024 * 1024
local chunk = vars.nonce .. string.rep("0123456789abcdef", 64)
local reps = size // #chunk + 1
local art = artifact.bytes(string.rep(chunk, reps):sub(1, size), "blob.bin")
local dest = vars.dest
local ok, a, b, c, d = goroutine.async(function()
  print("s5-marker transfer starts")
  local saved, how = art:save(dest)
  if not saved then return "save failed", tostring(how), 0, false end
  local got = fs.read(dest)
  local same = got == string.rep(chunk, reps):sub(1, size)   -- rebuilt here: no 4 MiB upvalue
  return "saved", how, #got, same
end, { delegate_to = "a1", name = "blob", timeout = "60s" }):await()
print("s5", tostring(ok), tostring(a), tostring(b), tostring(c), tostring(d))
EOF
run "$WORK/s5.out" "$WORK/s5.err" "$WORK/bandwidth.sloth" -e "nonce=$RANDOM$RANDOM" -e "dest=$WORK/a1-dest/blob.bin"
out=$WORK/s5.out
t_start=$(time_of "$out" "s5-marker transfer starts")
t_end=$(awk -F'\t' '$2 == "s5" { print $1; exit }' "$out")
got=$(awk -F'\t' '$2 == "s5" { print $3, $4, $5, $6, $7 }' "$out")
on_disk=$(stat -c %s "$WORK/a1-dest/blob.bin" 2>/dev/null)
if [ -n "$t_start" ] && [ -n "$t_end" ]; then took=$(secs "$t_start" "$t_end"); else took=""; fi
if [ "$(exit_of "$out")" = 0 ] && [ "$got" = "true saved transferred 4194304 true" ] && [ "$on_disk" = 4194304 ] &&
  [ -n "$took" ] && lt 2 "$took" && lt "$took" 30; then
  rate=$(awk -v s="$took" 'BEGIN { printf "%.2f", 4194304 * 8 / s / 1e6 }')
  ok "bandwidth cap 8mbit: 4 MiB artifact arrived intact on a1 in ${took}s (${rate} Mbit/s)"
else
  failed "bandwidth cap 8mbit: wanted exit 0, 'true saved transferred 4194304 true', 2 s < time < 30 s; got exit $(exit_of "$out"), '$got', on disk ${on_disk:-none}, ${took:-?}s"
  show "$out" "$WORK/s5.err"
fi
tc qdisc del dev "${VETH[0]}" root 2>/dev/null

# --- 6. silent peer ---------------------------------------------------------------------------
# a2 drops everything that reaches it (before any connection: a new master process).
# `sloth-master health` must report a2 down and a1 up, and exit 1, within the connect
# timeout (3 s) plus a margin.
ip netns exec "${NS[1]}" nft -f - <<'EOF' || failed "silent peer: nft rule in sloth-a2"
table netdev sloth_silent {
  chain ingress { type filter hook ingress device "eth0" priority 0; policy drop; }
}
EOF
t0=$(now)
timeout 60 "$MASTER" health -i "$INV" --certs "$CERTS" >"$WORK/s6.out" 2>"$WORK/s6.err" 9>&-
code=$?
took=$(secs "$t0" "$(now)")
# The table's rows: │ host ┆ address ┆ status ┆ latency ┆ ... ┆ error │
status_of() { awk -F'┆' -v h="$1" '{ n = $1; gsub(/[│ ]/, "", n); s = $3; gsub(/ /, "", s) } n == h { print s; exit }' "$WORK/s6.out"; }
a2_error=$(awk -F'┆' '$1 ~ /[│ ]a2 *$/ { e = $NF; sub(/^ */, "", e); sub(/ *│.*$/, "", e); print e; exit }' "$WORK/s6.out")
if [ "$code" = 1 ] && [ "$(status_of a1)" = up ] && [ "$(status_of a2)" = down ] &&
  grep -q "1 up, 1 down" "$WORK/s6.out" && lt "$took" 5; then
  ok "silent peer: health exited 1 after ${took}s: a1 up, a2 down ($a2_error)"
else
  failed "silent peer: wanted exit 1 within 5 s, a1 up, a2 down; got exit $code after ${took}s, a1 '$(status_of a1)', a2 '$(status_of a2)'"
  show "$WORK/s6.out" "$WORK/s6.err"
fi
ip netns exec "${NS[1]}" nft delete table netdev sloth_silent 2>/dev/null

# --- 3 (end). the task orphaned by the link going down ------------------------------------------
# The agent lost its master too (same idle timeout): it must have stopped the task, which
# would otherwise have written $ORPHAN 20 s after it started.
if [ -n "$S3_TASK_START" ]; then
  left=$(awk -v s="$S3_TASK_START" -v n="$(now)" 'BEGIN { d = s + 22 - n; printf "%.2f", (d > 0 ? d : 0) }')
  sleep "$left" 9>&- & wait $!    # (wait: a TERM is handled at once)
  if [ ! -e "$ORPHAN" ]; then
    ok "link down: the agent stopped a1's orphaned task (22 s later it has not finished its sleep)"
  else
    failed "link down: a1's task ran on for 20 s after its connection was lost (the agent did not stop it)"
    show "$WORK/agent-a1.log"
  fi
fi

echo "netfault: $pass ok, $fail failed ($(secs "$T0" "$(now)")s)"
[ "$fail" = 0 ]
