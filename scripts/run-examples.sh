#!/usr/bin/env bash
# Runs every example on a local fleet and checks its output and exit code.
# Usage: scripts/run-examples.sh [BIN_DIR]   (default: target/debug)
#
# The deployment and health-check examples are run as one scripted scenario (see
# "deployment scenario" below): they start real web services (the release's serve.pl)
# on the local fleet, under /tmp/sloth-demo/<host>/. Every service this script may
# have started is stopped when it exits, however it exits.
set -uo pipefail
cd "$(dirname "$0")/.."
# Runs are recorded in the build directory's history, not in the user's ~/.local/state.
export SLOTH_STATE_DIR="${SLOTH_STATE_DIR:-$PWD/target/sloth-state}"
BIN="${1:-target/debug}/sloth-master"
FLEET=(-i examples/fleet.toml --local-fleet)
DEMO=/tmp/sloth-demo            # the app_dir root of the hosts in examples/fleet.toml
HOSTS=(web-01 web-02 web-03 api-01 api-02 db-01)
pass=0
fail=0
LAST_OUT=""

check() { # name expected_exit grep_pattern... -- command...
  local name=$1 want=$2; shift 2
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  local out code
  out=$(timeout 300 "$@" 2>&1); code=$?
  LAST_OUT=$out
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

# The state of a process: empty when it is gone, Z for a zombie, R/S/... otherwise.
proc_state() { sed -n 's/^.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null; }
alive() { local s; s=$(proc_state "$1"); [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]; }

# Stop the demo service whose pid is in FILE (only if it is still our serve.pl).
stop_service() {
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] || return 0
  grep -qa serve.pl "/proc/$pid/cmdline" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null
  for _ in $(seq 20); do alive "$pid" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
}
stop_all_services() {
  local f
  for f in "$DEMO"/*/service.pid; do stop_service "$f"; done
}
trap 'stop_all_services; rm -f "${HEALTH_INV:-}"' EXIT

check hello_fleet 0 "6/6 hosts answered" "web-01 +-> hello from web-01 \(frontend\)" "RECAP" -- \
  "$BIN" run examples/hello_fleet.sloth "${FLEET[@]}"

# ---- deployment scenario ----------------------------------------------------------
# Start from nothing: no service left from an earlier run, no release on disk.
stop_all_services
rm -rf "$DEMO"
DEPLOY=examples/parallel_deployment.sloth
HEALTH=examples/parallel_health_check.sloth
# The health check reads this machine's own disk, memory and load, which the scenario
# does not control (a CI machine may run with / 98 % full). Its runs use a copy of the
# inventory whose disk and memory thresholds always pass; the HTTP and TCP checks are
# the ones the scenario drives.
HEALTH_INV=$(mktemp /tmp/sloth-health-fleet.XXXXXX.toml)
sed -E -e 's/disk_max_used_pct = [0-9.]+/disk_max_used_pct = 100/g' \
  -e 's/mem_min_available_pct = [0-9.]+/mem_min_available_pct = 0/g' \
  examples/fleet.toml >"$HEALTH_INV"
HEALTH_FLEET=(-i "$HEALTH_INV" --local-fleet)
per_host() { # PATTERN [EXCEPT_HOST]: one pattern per host, each @ replaced by its name
  local h; for h in "${HOSTS[@]}"; do [ "$h" = "${2:-}" ] || echo "${1//@/$h}"; done
}
# A clean machine has nothing in its artifact caches ($TMPDIR/sloth-artifacts-<host>),
# so the first deployment transfers the release; a machine that ran this before still
# has the same bytes cached (the same version packs to the same sha256): accept either.
mapfile -t deployed_100 < <(per_host '^@ +1\.0\.0 +deployed +release unpacked \(artifact (transferred|cached)\)')
check "deployment (parallel, 1.0.0)" 0 "${deployed_100[@]}" \
  "deploying 1\.0\.0 to 6 host\(s\), parallel" \
  "http://127\.0\.0\.1:18081/" \
  "total time \(parallel\): [0-9]+ ms for 6 host\(s\)" \
  "deployment of 1\.0\.0: 6/6 host\(s\) ok" -- \
  "$BIN" run "$DEPLOY" "${FLEET[@]}"
first_parallel=$(grep -oE 'total time \(parallel\): [0-9]+ ms' <<<"$LAST_OUT" | grep -oE '[0-9]+')

# The same version again: every host has the release unpacked, linked and served
# already: no resource changes anything (changed=0 on every host), nothing is fetched.
mapfile -t unchanged_100 < <(per_host '^@ +1\.0\.0 +unchanged +release already there')
mapfile -t zero < <(per_host '^  @ +ok=1 +changed=0 +failed=0 ')
check "deployment again, same version (nothing to do, changed=0)" 0 "${unchanged_100[@]}" "${zero[@]}" \
  "deployment of 1\.0\.0: 6/6 host\(s\) ok" -- \
  "$BIN" run "$DEPLOY" "${FLEET[@]}"

# Check mode with a new version: each host would unpack it, switch the link and restart
# its service; nothing changes (the link still points at 1.0.0 after).
mapfile -t would < <(per_host '^@ +1\.1\.0 +would change +release would be unpacked')
mapfile -t would_link < <(per_host '^\[@ deploy\] would change: file\.symlink /tmp/sloth-demo/@/current \(retargeted\)')
check "deployment of 1.1.0 in check mode (--check)" 0 "${would[@]}" "${would_link[@]}" \
  "RECAP \(check mode" -- \
  "$BIN" run "$DEPLOY" "${FLEET[@]}" -e version=1.1.0 --check
for h in "${HOSTS[@]}"; do
  if [ "$(readlink "$DEMO/$h/current")" != "$DEMO/$h/releases/1.0.0" ]; then
    echo "example FAILED: check mode changed $h's current link"; fail=$((fail+1))
  fi
done
# ... and what it lists is exactly what the real run then changes.
changed_set() { # the --json document on stdin -> "host resource target" lines, sorted
  python3 -c 'import json, sys
d = json.load(sys.stdin)
for h, v in sorted(d["hosts"].items()):
    for c in v["changes"]:
        if c["kind"] == "resource" and c["changed"]:
            print(h, c["resource"], c["target"])' | sort
}
planned=$("$BIN" run "$DEPLOY" "${FLEET[@]}" -e version=1.1.0 --check --json 2>/dev/null | changed_set)
made=$("$BIN" run "$DEPLOY" "${FLEET[@]}" -e version=1.1.0 --json 2>/dev/null | changed_set)
if [ -n "$made" ] && [ "$planned" = "$made" ]; then
  echo "example ok: --check listed exactly the $(wc -l <<<"$made") changes the real run made"
  pass=$((pass+1))
else
  echo "example FAILED: --check and the real run disagree"
  diff <(echo "$planned") <(echo "$made") | head -20
  fail=$((fail+1))
fi

mapfile -t healthy < <(per_host '^@ +pass 200 +pass 1/1 +pass [0-9]+% +pass [0-9]+% +pass [0-9.]+ +healthy$')
check "health check (all healthy)" 0 "${healthy[@]}" \
  "^HOST +HTTP +TCP +DISK +MEM +LOAD +STATUS" \
  "all 6 host\(s\) healthy" -- \
  "$BIN" run "$HEALTH" "${HEALTH_FLEET[@]}"

# ---- every other example declares its expectations in its header ------------------
#   -- expect-exit: N        -- expect: REGEX        -- args: extra CLI args
# (files marked "-- ci: custom" are run by the scenario above and below)
for f in examples/*.sloth; do
  case "$(basename "$f")" in hello_fleet.sloth) continue;; esac
  grep -q '^-- ci: custom' "$f" && continue
  want=$(sed -n 's/^-- expect-exit: *//p' "$f" | head -n1); want=${want:-0}
  mapfile -t pats < <(sed -n 's/^-- expect: *//p' "$f")
  args=$(sed -n 's/^-- args: *//p' "$f" | head -n1)
  # shellcheck disable=SC2086
  check "$(basename "$f")" "$want" "${pats[@]}" -- "$BIN" run "$f" $args
done

# ---- deployment scenario, continued -----------------------------------------------
# Take one host's service down behind sloth's back: the health check must fail and
# name that host and its failing checks.
victim=web-02
vpid=$(tr -dc 0-9 <"$DEMO/$victim/service.pid")
stop_service "$DEMO/$victim/service.pid"
if alive "$vpid"; then echo "could not stop $victim's service (pid $vpid)"; fail=$((fail+1)); fi
mapfile -t others < <(per_host '^@ +pass 200 +pass 1/1 .* healthy$' "$victim")
check "health check ($victim down)" 1 "${others[@]}" \
  "^$victim +FAIL down +FAIL 0/1 .* UNHEALTHY$" \
  "^$victim +http FAIL: .*127\.0\.0\.1:18082.*refused" \
  "^$victim +tcp +FAIL: .*127\.0\.0\.1:18082.*refused" \
  "1 of 6 host\(s\) unhealthy: $victim \(http, tcp\)" -- \
  "$BIN" run "$HEALTH" "${HEALTH_FLEET[@]}"

# The same kind of deployment (new version, services restarted), one host at a time,
# and then in parallel again: the two timings are measured, not claimed.
mapfile -t deployed_115 < <(per_host '^@ +1\.1\.5 +deployed +release unpacked')
check "deployment (sequential, 1.1.5)" 0 "${deployed_115[@]}" \
  "deploying 1\.1\.5 to 6 host\(s\), sequential" \
  "total time \(sequential\): [0-9]+ ms for 6 host\(s\)" \
  "deployment of 1\.1\.5: 6/6 host\(s\) ok" -- \
  "$BIN" run "$DEPLOY" "${FLEET[@]}" -e version=1.1.5 -e mode=sequential
sequential=$(grep -oE 'total time \(sequential\): [0-9]+ ms' <<<"$LAST_OUT" | grep -oE '[0-9]+')

mapfile -t deployed_120 < <(per_host '^@ +1\.2\.0 +deployed +release unpacked')
check "deployment (parallel, 1.2.0)" 0 "${deployed_120[@]}" \
  "total time \(parallel\): [0-9]+ ms for 6 host\(s\)" \
  "deployment of 1\.2\.0: 6/6 host\(s\) ok" -- \
  "$BIN" run "$DEPLOY" "${FLEET[@]}" -e version=1.2.0
parallel=$(grep -oE 'total time \(parallel\): [0-9]+ ms' <<<"$LAST_OUT" | grep -oE '[0-9]+')

# A release that does not serve its version on one host: that host rolls back to
# 1.2.0, the others move on to 1.3.0, and the run fails naming the host.
mapfile -t deployed_130 < <(per_host '^@ +1\.3\.0 +deployed +release unpacked' web-03)
check "deployment with a broken host (rollback)" 1 "${deployed_130[@]}" \
  "^web-03 +1\.3\.0 +ROLLED BACK to 1\.2\.0 \(HTTP 200 but the page does not show version 1\.3\.0\)" \
  "deployment of 1\.3\.0 failed on 1 host\(s\): web-03" -- \
  "$BIN" run "$DEPLOY" "${FLEET[@]}" -e version=1.3.0 -e fail_host=web-03
check "health check after the rollback" 0 "${healthy[@]}" "all 6 host\(s\) healthy" -- \
  "$BIN" run "$HEALTH" "${HEALTH_FLEET[@]}"

# 1.3.0 again, this time without the broken build: the five hosts that serve it have
# the artifact cached and change nothing; web-03 replaces the broken release it has
# unpacked under releases/1.3.0 with the good one and moves on from 1.2.0.
mapfile -t unchanged_130 < <(per_host '^@ +1\.3\.0 +unchanged +release already there' web-03)
check "deployment of 1.3.0 again, fixed (web-03 catches up)" 0 "${unchanged_130[@]}" \
  "^web-03 +1\.3\.0 +deployed +release unpacked \(artifact (transferred|cached)\)" \
  "deployment of 1\.3\.0: 6/6 host\(s\) ok" -- \
  "$BIN" run "$DEPLOY" "${FLEET[@]}" -e version=1.3.0

# Stop every service through sloth, then make sure nothing is left behind.
mapfile -t stopped < <(per_host '^@ +service stopped$')
check "stop every service" 0 "${stopped[@]}" -- \
  "$BIN" run "$DEPLOY" "${FLEET[@]}" -e stop=1
left=$(pgrep -f "serve.pl .* $DEMO/" || true)
if [ -n "$left" ]; then
  echo "example FAILED: services left running after stop: $left"; fail=$((fail+1))
fi

echo "deployment timings (6 hosts, new version + service restart each):" \
  "parallel ${parallel:-?} ms (first deployment: ${first_parallel:-?} ms)," \
  "sequential ${sequential:-?} ms"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
