#!/usr/bin/env bash
# Throwaway test containers: this machine's own root tree booted with systemd as PID 1
# (systemd-nspawn), every write going to a tmpfs overlay that vanishes when the container
# stops, and a sloth-agent inside started by systemd. The container shares the host's
# network, so its agent answers on a 127.0.0.0/8 address of the host. Tests of resources
# that change system state (packages, users, systemd units) run against these, so the
# machine is left as it was. Needs root and systemd-container (`.ci/run` installs it).
#
#   scripts/container.sh boot NAME ADDR PORT CERTS AGENT [BIND...]
#       Boot container NAME with its agent listening on ADDR:PORT, named AGENT_NAME (from
#       the environment; default NAME), using CERTS/AGENT_NAME.crt and .key, CERTS/ca.crt
#       and the agent binary AGENT. Each BIND is
#       HOST_PATH:CONTAINER_PATH (read-only) or rw:HOST_PATH:CONTAINER_PATH. Prints the
#       agent's readiness line once it answers; exits non-zero with the reason (console
#       log, agent log) when it does not within BOOT_TIMEOUT seconds (default 60).
#   scripts/container.sh ssh-host NAME INDEX AUTHORIZED_KEYS [no-systemd]
#       A bare host for bootstrap tests: no sloth agent, its own network namespace
#       (veth: the host's side 10.79.INDEX.1/30, the container 10.79.INDEX.2/30, INDEX
#       1..250), and OpenSSH's sshd on port 22 letting root in with the keys in
#       AUTHORIZED_KEYS (a file, mode 0600). Booted with systemd (sshd started by
#       ssh.service) or, with `no-systemd`, with sshd alone as its first process. Prints
#       the container's address once sshd accepts connections.
#   scripts/container.sh stop NAME
#       Power the container off (SIGTERM to nspawn, then SIGKILL), also after a crash of
#       the caller, and remove its cgroups. Idempotent.
#
# How (see docs/resources.md, "Tests"): nspawn refuses --volatile=overlay on -D / itself,
# so / is bind-mounted at a private path inside a private mount namespace and booted from
# there. The container gets its own cgroup (this machine has no systemd; nspawn
# --keep-unit creates payload/ and supervisor/ under the caller's cgroup). Host services
# that would clash with the host (database ports, apt timers taking the dpkg lock, NTP)
# are masked. State and logs: /run/sloth-nspawn/NAME/.
set -euo pipefail

cmd=${1:-}
name=${2:-}
[ -n "$cmd" ] && [ -n "$name" ] || { sed -n 2,29p "$0" >&2; exit 2; }
case "$name" in *[!A-Za-z0-9_-]*) echo "container name must be [A-Za-z0-9_-]: $name" >&2; exit 2;; esac
state=/run/sloth-nspawn/$name
cg=sloth-nspawn-$name

alive() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]
}

stop() {
    local pid init end d procs
    pid=$(cat "$state/nspawn.pid" 2>/dev/null || true)
    # Only our own nspawn (a pid can be reused after a crash).
    if [ -n "$pid" ] && grep -q "$cg" "/proc/$pid/cgroup" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        end=$(( $(date +%s) + 10 ))
        while alive "$pid" && [ "$(date +%s)" -lt "$end" ]; do sleep 0.02; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    # nspawn killed while the container runs on as an orphan: power its systemd off.
    init=$(head -1 "/sys/fs/cgroup/unified/$cg/payload/init.scope/cgroup.procs" 2>/dev/null || true)
    if [ -n "$init" ]; then
        kill -RTMIN+4 "$init" 2>/dev/null || true
        end=$(( $(date +%s) + 10 ))
        while alive "$init" && [ "$(date +%s)" -lt "$end" ]; do sleep 0.02; done
    fi
    # Whatever is left is killed; the cgroups go, deepest first.
    for h in unified systemd; do
        d=/sys/fs/cgroup/$h/$cg
        [ -d "$d" ] || continue
        for _ in $(seq 1 100); do
            procs=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
            [ -z "$procs" ] && break
            # shellcheck disable=SC2086
            kill -KILL $procs 2>/dev/null || true
            sleep 0.05
        done
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    rmdir "/run/systemd/nspawn/propagate/$name" 2>/dev/null || true
    rmdir "$state/root" 2>/dev/null || true
    rm -f "$state/nspawn.pid"
    # The network namespace of an ssh host (its veth pair goes with it).
    if [ -f "$state/netns" ]; then
        ip netns del "$(cat "$state/netns")" 2>/dev/null || true
        rm -f "$state/netns"
    fi
}

# Run nspawn on / (overlaid) in its own cgroup and private mount namespace, in the
# background; its pid goes to $state/nspawn.pid. Arguments: nspawn's own.
nspawn() {
    (
        for h in unified systemd; do
            if [ -d "/sys/fs/cgroup/$h" ]; then
                mkdir -p "/sys/fs/cgroup/$h/$cg"
                echo $BASHPID > "/sys/fs/cgroup/$h/$cg/cgroup.procs"
            fi
        done
        exec unshare -m --propagation private /bin/sh -c 'mount --bind / "$0" && exec "$@"' \
            "$state/root" \
            systemd-nspawn --register=no --keep-unit --machine="$name" \
            -D "$state/root" --volatile=overlay "$@"
    ) </dev/null >"$state/console.log" 2>&1 &
    echo $! > "$state/nspawn.pid"
}

ssh_host() {
    local idx=$1 keys=$2 mode=${3:-systemd}
    case "$idx" in ''|*[!0-9]*) echo "INDEX must be a number 1..250" >&2; exit 2;; esac
    [ "$idx" -ge 1 ] && [ "$idx" -le 250 ] || { echo "INDEX must be 1..250" >&2; exit 2; }
    [ -f "$keys" ] || { echo "missing $keys" >&2; exit 1; }
    command -v systemd-nspawn >/dev/null || {
        echo "systemd-nspawn is missing: apt-get install systemd-container" >&2; exit 1; }
    command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || {
        echo "sshd is missing: apt-get install openssh-server" >&2; exit 1; }
    stop
    rm -rf "$state"
    mkdir -p "$state/root" "$state/out"
    local ns=$name hostif="slh$idx" cif="slc$idx" ip="10.79.$idx.2"
    ip link del "$hostif" 2>/dev/null || true
    ip netns add "$ns"
    echo "$ns" > "$state/netns"
    ip link add "$hostif" type veth peer name "$cif"
    ip link set "$cif" netns "$ns"
    ip addr add "10.79.$idx.1/30" dev "$hostif"
    ip link set "$hostif" up
    ip -n "$ns" addr add "$ip/30" dev "$cif"
    ip -n "$ns" link set "$cif" up
    ip -n "$ns" link set lo up
    local common=(--network-namespace-path="/run/netns/$ns" --bind-ro="$keys:/root/.ssh/authorized_keys")
    if [ "$mode" = no-systemd ]; then
        nspawn "${common[@]}" /bin/sh -c 'mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e'
    else
        local kargs=(systemd.firstboot=off systemd.wants=ssh.service) u
        for u in postgresql.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
                 man-db.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service; do
            kargs+=("systemd.mask=$u")
        done
        nspawn "${common[@]}" -b --console=read-only "${kargs[@]}"
    fi
    local pid deadline=$(( $(date +%s) + ${BOOT_TIMEOUT:-60} ))
    pid=$(cat "$state/nspawn.pid")
    until timeout 1 bash -c "exec 3<>/dev/tcp/$ip/22" 2>/dev/null; do
        if ! alive "$pid"; then
            echo "container $name: nspawn exited before sshd answered; console:" >&2
            tail -40 "$state/console.log" >&2
            stop; exit 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "container $name: no sshd on $ip:22 after ${BOOT_TIMEOUT:-60}s; console:" >&2
            tail -40 "$state/console.log" >&2
            stop; exit 1
        fi
        sleep 0.05
    done
    echo "$ip"
}

boot() {
    local addr=$1 port=$2 certs=$3 agent=$4 an=${AGENT_NAME:-$name}
    shift 4
    command -v systemd-nspawn >/dev/null || {
        echo "systemd-nspawn is missing: apt-get install systemd-container" >&2; exit 1; }
    for f in "$certs/$an.crt" "$certs/$an.key" "$certs/ca.crt" "$agent"; do
        [ -e "$f" ] || { echo "missing $f" >&2; exit 1; }
    done
    stop
    rm -rf "$state"
    mkdir -p "$state/root" "$state/out"
    : > "$state/out/agent.out"
    : > "$state/out/agent.err"
    cat > "$state/sloth-test-agent.service" <<EOF
[Unit]
Description=sloth agent (test container $name)
After=network.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/sloth-agent --listen $addr:$port --cert /etc/sloth-test/$an.crt --key /etc/sloth-test/$an.key --ca /etc/sloth-test/ca.crt --name $an
StandardOutput=append:/run/sloth-out/agent.out
StandardError=append:/run/sloth-out/agent.err
ExecStopPost=/bin/sh -c 'echo "result=\$SERVICE_RESULT code=\$EXIT_CODE status=\$EXIT_STATUS" >> /run/sloth-out/agent.exit'
Restart=no
EOF
    local binds=() b
    for b in "$@"; do
        case "$b" in
            rw:*) binds+=("--bind=${b#rw:}") ;;
            *) binds+=("--bind-ro=$b") ;;
        esac
    done
    local kargs=(systemd.firstboot=off systemd.wants=sloth-test-agent.service) u
    for u in postgresql.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
             man-db.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service ssh.service; do
        kargs+=("systemd.mask=$u")
    done
    nspawn -b --console=read-only \
        --bind-ro="$certs:/etc/sloth-test" \
        --bind-ro="$agent:/usr/local/sbin/sloth-agent" \
        --bind-ro="$state/sloth-test-agent.service:/etc/systemd/system/sloth-test-agent.service" \
        --bind="$state/out:/run/sloth-out" \
        ${binds[@]+"${binds[@]}"} \
        "${kargs[@]}"
    local pid
    pid=$(cat "$state/nspawn.pid")
    local deadline=$(( $(date +%s) + ${BOOT_TIMEOUT:-60} ))
    until grep -q '"event":"ready"' "$state/out/agent.out"; do
        if [ -s "$state/out/agent.exit" ]; then
            echo "container $name: the agent exited: $(cat "$state/out/agent.exit")" >&2
            tail -5 "$state/out/agent.err" >&2
            stop; exit 1
        fi
        if ! alive "$pid"; then
            echo "container $name: nspawn exited before the agent was ready; console:" >&2
            tail -40 "$state/console.log" >&2
            stop; exit 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "container $name: no agent after ${BOOT_TIMEOUT:-60}s; console:" >&2
            tail -40 "$state/console.log" >&2
            cat "$state/out/agent.err" >&2
            stop; exit 1
        fi
        sleep 0.05
    done
    head -1 "$state/out/agent.out"
}

case "$cmd" in
    boot) shift 2; [ $# -ge 4 ] || { sed -n 2,29p "$0" >&2; exit 2; }; boot "$@" ;;
    ssh-host) shift 2; [ $# -ge 2 ] || { sed -n 2,29p "$0" >&2; exit 2; }; ssh_host "$@" ;;
    stop) stop ;;
    *) sed -n 2,29p "$0" >&2; exit 2 ;;
esac
