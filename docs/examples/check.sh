#!/usr/bin/env bash
# Runs every example of the documentation and checks it.
#
#   bash docs/examples/check.sh [BIN_DIR] [NAME...]
#
# BIN_DIR (default target/debug) holds sloth-master and sloth-agent (`cargo build`).
# NAMEs (async.sloth, fleet.md) restrict the run to those examples / docs; without
# names everything runs, including the command-line checks.
#
# Each docs/examples/NAME.sloth declares in its header comment:
#   -- expect: REGEX        a line of the output (stdout+stderr) must match (grep -E);
#                           repeatable, every one must match
#   -- expect-exit: N       the exit code (default 0)
#   -- args: ARGS           the fleet arguments (default: --local-fleet 3); paths are
#                           relative to the repository root, where the script runs
#   -- requires: CMD        skip the example when CMD is not installed
# and is run as:  BIN_DIR/sloth-master run docs/examples/NAME.sloth ARGS
# ARGS starting with @container run the example against one host named "box": a
# throwaway container (scripts/container.sh, root only) whose changes vanish after;
# the rest of ARGS follows (e.g. "@container --check").
#
# It also checks that every code block the docs mark with
#   <!-- example: NAME.sloth -->
# is exactly the content of docs/examples/NAME.sloth (so the docs never drift from what
# is tested), and runs the few command lines the docs show (health, exec, certs,
# the security drills).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN_DIR=target/debug
if [ $# -gt 0 ] && [ -d "$1" ]; then
  BIN_DIR=$1
  shift
fi
ONLY=("$@")   # example or doc file names (async.sloth, fleet.md): run only those
MASTER="$BIN_DIR/sloth-master"
AGENT="$BIN_DIR/sloth-agent"
if [ ! -x "$MASTER" ] || [ ! -x "$AGENT" ]; then
  echo "no $MASTER / $AGENT: run 'cargo build' first" >&2
  exit 2
fi

# Runs are recorded in the build directory's history, not in the user's ~/.local/state.
export SLOTH_STATE_DIR="${SLOTH_STATE_DIR:-$PWD/target/sloth-state}"

pass=0
fail=0
skip=0
slow=()
failed_names=()

ok() { echo "ok    $1"; pass=$((pass + 1)); }
bad() {
  echo "FAIL  $1"
  fail=$((fail + 1))
  failed_names+=("$1")
}

wanted() { # is this name selected on the command line?
  [ ${#ONLY[@]} -eq 0 ] && return 0
  local n
  for n in "${ONLY[@]}"; do [ "$n" = "$1" ] && return 0; done
  return 1
}

# check NAME WANT_EXIT OUTPUT CODE PATTERN...
check_output() {
  local name=$1 want=$2 out=$3 code=$4
  shift 4
  local good=1 p
  if [ "$code" != "$want" ]; then
    echo "      exit code $code, wanted $want"
    good=0
  fi
  for p in "$@"; do
    if ! grep -qE -- "$p" <<<"$out"; then
      echo "      no line matches: $p"
      good=0
    fi
  done
  if [ $good = 1 ]; then
    ok "$name"
  else
    echo "$out" | tail -n 30 | sed 's/^/      | /'
    bad "$name"
  fi
}

# ---------------------------------------------------------------------------
# 1. Every example script.
echo "== examples"
for f in docs/examples/*.sloth; do
  name=$(basename "$f")
  wanted "$name" || continue
  want=$(sed -n 's/^-- expect-exit: *//p' "$f" | head -n1)
  want=${want:-0}
  mapfile -t pats < <(sed -n 's/^-- expect: *//p' "$f")
  args=$(sed -n 's/^-- args: *//p' "$f" | head -n1)
  args=${args:---local-fleet 3}
  req=$(sed -n 's/^-- requires: *//p' "$f" | head -n1)
  if [ -n "$req" ] && ! command -v "$req" >/dev/null 2>&1; then
    echo "skip  $name (needs $req)"
    skip=$((skip + 1))
    continue
  fi
  if [ ${#pats[@]} -eq 0 ]; then
    echo "      $name declares no '-- expect:' line"
    bad "$name"
    continue
  fi
  box=
  if [[ "$args" == @container* ]]; then
    if [ "$(id -u)" != 0 ]; then
      echo "skip  $name (runs in a container: needs root)"
      skip=$((skip + 1))
      continue
    fi
    box=docs-$$-${name%.sloth}
    box=${box//_/-}
    boxdir=$(mktemp -d)
    "$MASTER" certs init --dir "$boxdir/certs" >/dev/null
    "$MASTER" certs issue box --dir "$boxdir/certs" >/dev/null
    printf '[hosts.box]\naddress = "127.78.%d.1:7447"\n' $(( $$ % 200 + 1 )) > "$boxdir/inv.toml"
    if ! AGENT_NAME=box bash scripts/container.sh boot "$box" "127.78.$(( $$ % 200 + 1 )).1" 7447 \
        "$boxdir/certs" "$AGENT" >"$boxdir/boot.log" 2>&1; then
      sed 's/^/      | /' "$boxdir/boot.log"
      bad "$name (container did not boot)"
      rm -rf "$boxdir"
      continue
    fi
    args="-i $boxdir/inv.toml --certs $boxdir/certs ${args#@container}"
  fi
  start=$(date +%s%N)
  # shellcheck disable=SC2086
  out=$(NO_COLOR=1 timeout 60 "$MASTER" run "$f" $args 2>&1)
  code=$?
  if [ -n "$box" ]; then
    bash scripts/container.sh stop "$box" >/dev/null 2>&1
    rm -rf "$boxdir"
  fi
  ms=$((($(date +%s%N) - start) / 1000000))
  [ "$ms" -gt 3000 ] && slow+=("$name (${ms} ms)")
  check_output "$name" "$want" "$out" "$code" "${pats[@]}"
done

# ---------------------------------------------------------------------------
# 2. Code blocks in the docs are the example files, byte for byte.
echo "== docs code blocks"
for md in docs/*.md; do
  wanted "$(basename "$md")" || [ ${#ONLY[@]} -eq 0 ] || continue
  while IFS= read -r ex; do
    [ -n "$ex" ] || continue
    file="docs/examples/$ex"
    if [ ! -f "$file" ]; then
      echo "      $md shows $ex, which does not exist"
      bad "$(basename "$md"): $ex"
      continue
    fi
    # The fenced block right after the marker.
    block=$(awk -v ex="$ex" '
      $0 == "<!-- example: " ex " -->" { want = 1; next }
      want == 1 && /^```/ { inside = 1; want = 2; next }
      inside && /^```$/ { exit }
      inside { print }' "$md")
    if [ "$block" == "$(cat "$file")" ]; then
      ok "$(basename "$md"): $ex"
    else
      echo "      the block after <!-- example: $ex --> differs from $file"
      diff <(echo "$block") "$file" | head -n 10 | sed 's/^/      | /'
      bad "$(basename "$md"): $ex"
    fi
  done < <(sed -n 's/^<!-- example: \(.*\) -->$/\1/p' "$md")
done

# ---------------------------------------------------------------------------
# 3. Command lines shown in the docs.
if [ ${#ONLY[@]} -eq 0 ]; then
  echo "== commands"
  run_cmd() { # NAME WANT_EXIT PATTERN -- COMMAND...
    local name=$1 want=$2 pat=$3
    shift 4
    local out code
    out=$(NO_COLOR=1 timeout 60 "$@" 2>&1)
    code=$?
    check_output "$name" "$want" "$out" "$code" "$pat"
  }
  run_cmd "health (table)" 0 "3 up, 0 down" -- \
    "$MASTER" health --local-fleet 3
  run_cmd "health web --json" 0 '"up": 3' -- \
    "$MASTER" health web -i examples/fleet.toml --local-fleet --json
  run_cmd "health --limit" 0 "2 up, 0 down" -- \
    "$MASTER" health web --limit 'web:!web-03' -i examples/fleet.toml --local-fleet
  run_cmd "health --check" 0 "all 2 host\(s\) healthy" -- \
    "$MASTER" health --local-fleet 2 --check docs/examples/health_check.sloth
  run_cmd "exec" 0 "\[web-02 exec\] Linux" -- \
    "$MASTER" exec web -i examples/fleet.toml --local-fleet -- uname -s
  run_cmd "exec failure" 1 "web-01 +FAILED +lua: web-01: exit code 3" -- \
    "$MASTER" exec web-01 -i examples/fleet.toml --local-fleet -- 'exit 3'
  run_cmd "exec --timeout" 1 "timeout exceeded: web-01: the task ran past its time limit" -- \
    "$MASTER" exec web-01 -i examples/fleet.toml --local-fleet --timeout 200ms -- sleep 5
  run_cmd "exec: bad pattern is a usage error" 2 "unknown host or group 'nope'" -- \
    "$MASTER" exec nope -i examples/fleet.toml --local-fleet -- true
  run_cmd "check: clean" 0 "no problems found" -- \
    "$MASTER" check examples/parallel_deployment.sloth -i examples/fleet.toml
  run_cmd "check: the copy-semantics trap is a warning" 0 "warning: a task assigns into 'results'" -- \
    "$MASTER" check docs/examples/copy_semantics.sloth
  run_cmd "run --check-first" 0 "hello from web-01" -- \
    "$MASTER" run examples/hello_fleet.sloth -i examples/fleet.toml --local-fleet --check-first
  run_cmd "run -e / --limit / --json" 0 '"success": true' -- \
    "$MASTER" run docs/examples/vars.sloth -i examples/fleet.toml --local-fleet --limit web --json -e version=2.1.0
  run_cmd "usage error: exit 2" 2 "expected KEY=VALUE" -- \
    "$MASTER" run docs/examples/vars.sloth -e oops
  run_cmd "bad pattern in --limit: exit 2" 2 "unknown host or group 'nope'" -- \
    "$MASTER" run docs/examples/vars.sloth --local-fleet 2 --limit nope

  # Certificates and the security drills: real agents, real TLS, on 127.0.0.1.
  tmp=$(mktemp -d)
  pids=()
  cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$tmp"
  }
  trap cleanup EXIT
  run_cmd "certs init" 0 "master private key, mode 0600" -- \
    "$MASTER" certs init --dir "$tmp/certs"
  run_cmd "certs init twice refuses" 2 "use --force" -- \
    "$MASTER" certs init --dir "$tmp/certs"
  run_cmd "certs issue web-01" 0 "agent private key, mode 0600" -- \
    "$MASTER" certs issue web-01 --san 127.0.0.1 --dir "$tmp/certs"
  run_cmd "certs issue db-01" 0 "install both on db-01" -- \
    "$MASTER" certs issue db-01 --dir "$tmp/certs"
  if [ "$(stat -c %a "$tmp/certs/web-01.key")" = 600 ] && [ "$(stat -c %a "$tmp/certs/ca.key")" = 600 ]; then
    ok "keys are 0600"
  else
    bad "keys are 0600"
  fi
  # Pick free-looking UDP ports.
  base=$((20000 + RANDOM % 20000))
  "$AGENT" --listen "127.0.0.1:$base" --cert "$tmp/certs/web-01.crt" --key "$tmp/certs/web-01.key" \
    --ca "$tmp/certs/ca.crt" --audit-log "$tmp/a1.audit" >"$tmp/a1.log" 2>&1 &
  pids+=($!)
  # db-01's certificate, but started under another name.
  "$AGENT" --listen "127.0.0.1:$((base + 1))" --cert "$tmp/certs/db-01.crt" --key "$tmp/certs/db-01.key" \
    --ca "$tmp/certs/ca.crt" --name web-09 --audit-log "$tmp/a2.audit" >"$tmp/a2.log" 2>&1 &
  pids+=($!)
  # web-01's certificate answering at the address the inventory gives for db-02.
  "$AGENT" --listen "127.0.0.1:$((base + 2))" --cert "$tmp/certs/web-01.crt" --key "$tmp/certs/web-01.key" \
    --ca "$tmp/certs/ca.crt" --name db-02 --audit-log "$tmp/a3.audit" >"$tmp/a3.log" 2>&1 &
  pids+=($!)
  cat >"$tmp/inventory.toml" <<EOF
[hosts.web-01]
address = "127.0.0.1:$base"
[hosts.db-01]
address = "127.0.0.1:$((base + 1))"
[hosts.db-02]
address = "127.0.0.1:$((base + 2))"
EOF
  # A "master" directory holding an agent's certificate: a stolen agent key.
  mkdir -p "$tmp/stolen"
  cp "$tmp/certs/ca.crt" "$tmp/stolen/ca.crt"
  cp "$tmp/certs/db-01.crt" "$tmp/stolen/master.crt"
  cp "$tmp/certs/db-01.key" "$tmp/stolen/master.key"
  sleep 0.5
  run_cmd "real agent with certs" 0 "1 up, 0 down" -- \
    "$MASTER" health web-01 -i "$tmp/inventory.toml" --certs "$tmp/certs" --connect-timeout 2s
  run_cmd "agent name differs from the inventory" 1 "says it is 'web-09', not 'db-01'" -- \
    "$MASTER" health db-01 -i "$tmp/inventory.toml" --certs "$tmp/certs" --connect-timeout 2s
  run_cmd "certificate for another name" 1 "certificate is for another name \(expected db-02; it is for web-01" -- \
    "$MASTER" health db-02 -i "$tmp/inventory.toml" --certs "$tmp/certs" --connect-timeout 2s
  run_cmd "agent certificate used as master" 1 "it is not a master certificate" -- \
    "$MASTER" health web-01 -i "$tmp/inventory.toml" --certs "$tmp/stolen" --connect-timeout 2s
  cleanup
  trap - EXIT
fi

echo
if [ ${#slow[@]} -gt 0 ]; then
  echo "slower than 3 s: ${slow[*]}"
fi
echo "$pass passed, $fail failed, $skip skipped"
if [ "$fail" -gt 0 ]; then
  echo "failed: ${failed_names[*]}"
  exit 1
fi
