#!/bin/sh
# Install the sloth agent on this host, for people who run their own configuration
# management (Ansible, Salt, Puppet, a golden image...). It writes the same files as
# `sloth-master bootstrap`; afterwards `sloth-master enroll NAME` on the master gives the
# agent its certificate (docs/install.md).
#
#   sh install-agent.sh --name NAME (--token-file FILE | --token TOKEN) [--binary PATH]
#                       [--port PORT] [--files DIR] [--no-systemd]
#
#   --name NAME      the agent's name: its inventory name on the master
#   --token-file F   a file holding a join token (`sloth-master token create NAME` on the
#                    master), `-` for stdin; not needed once the agent is enrolled
#   --token TOKEN    the token itself (it then shows in process lists and shell history:
#                    prefer --token-file)
#   --binary PATH    the sloth-agent binary to install (default: ./sloth-agent)
#   --port PORT      the UDP port it listens on, on every address (default 7447)
#   --files DIR      where sloth-agent.service and agent.toml.in are (default: agent/
#                    beside this script's directory, as in the repository)
#   --no-systemd     do not install or start a unit: print the command to run under
#                    your own supervisor instead
#
# Idempotent: files are replaced (atomically) only when they differ, and the service
# restarts only when something changed. Needs root. Exit 0 done, 1 failed, 2 bad usage.
set -eu

name="" token="" binary="./sloth-agent" port=7447 files="" systemd=yes
here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n 7,21p "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --name) name=${2:-}; shift 2 ;;
        --token) token=${2:-}; shift 2 ;;
        --token-file)
            if [ "${2:-}" = - ]; then token=$(cat); else
                [ -r "${2:-}" ] || { echo "install-agent.sh: cannot read ${2:-}" >&2; exit 1; }
                token=$(cat "$2"); fi
            shift 2 ;;
        --binary) binary=${2:-}; shift 2 ;;
        --port) port=${2:-}; shift 2 ;;
        --files) files=${2:-}; shift 2 ;;
        --no-systemd) systemd=no; shift ;;
        -h|--help) usage ;;
        *) echo "install-agent.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$name" ] || { echo "install-agent.sh: --name is required" >&2; usage; }
case "$name" in *[!A-Za-z0-9.-]*|"") echo "install-agent.sh: bad name '$name'" >&2; exit 2 ;; esac
case "$port" in ''|*[!0-9]*) echo "install-agent.sh: bad port '$port'" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "install-agent.sh: run it as root" >&2; exit 1; }
[ -x "$binary" ] || { echo "install-agent.sh: no executable $binary (--binary PATH)" >&2; exit 1; }
[ -n "$files" ] || files="$here/../agent"
unit="$files/sloth-agent.service"
template="$files/agent.toml.in"
[ -f "$template" ] || { echo "install-agent.sh: no $template (--files DIR)" >&2; exit 1; }
if [ "$systemd" = yes ]; then
    [ -d /run/systemd/system ] || {
        echo "install-agent.sh: this host does not run systemd; use --no-systemd" >&2; exit 1; }
    [ -f "$unit" ] || { echo "install-agent.sh: no $unit (--files DIR)" >&2; exit 1; }
fi
version=$("$binary" --version) || { echo "install-agent.sh: $binary --version failed" >&2; exit 1; }

changed=""
# Replace $2 by the file $1 when they differ (mode $3); note the change.
put() {
    if ! cmp -s "$1" "$2"; then
        chmod "$3" "$1"
        mv -f "$1" "$2"
        changed="$changed $2"
    else
        rm -f "$1"
    fi
}

umask 077
mkdir -p /etc/sloth
chmod 0700 /etc/sloth
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cp "$binary" /usr/local/bin/.sloth-agent.new
put /usr/local/bin/.sloth-agent.new /usr/local/bin/sloth-agent 0755

# The same file `sloth-master bootstrap` writes (one template for both).
sed -e "s/@PORT@/$port/" -e "s/@NAME@/$name/" "$template" > /etc/sloth/.agent.toml.new
put /etc/sloth/.agent.toml.new /etc/sloth/agent.toml 0600

if [ -s /etc/sloth/agent.crt ] && [ -s /etc/sloth/agent.key ]; then
    enrolled=yes
else
    enrolled=no
    [ -n "$token" ] || { echo "install-agent.sh: not enrolled yet: --token-file FILE is required" >&2; exit 1; }
    printf '%s\n' "$token" > /etc/sloth/.token.new
    put /etc/sloth/.token.new /etc/sloth/token 0600
fi

if [ "$systemd" = no ]; then
    echo "installed $version for $name (changed:${changed:- nothing})"
    echo "run under your supervisor, as root: /usr/local/bin/sloth-agent --config /etc/sloth/agent.toml"
    [ "$enrolled" = yes ] || echo "then on the master: sloth-master enroll $name"
    exit 0
fi

cp "$unit" /etc/systemd/system/.sloth-agent.service.new
before=$changed
put /etc/systemd/system/.sloth-agent.service.new /etc/systemd/system/sloth-agent.service 0644
[ "$changed" = "$before" ] || systemctl daemon-reload
systemctl enable sloth-agent >/dev/null 2>&1
if [ -n "$changed" ] || ! systemctl is-active --quiet sloth-agent; then
    systemctl restart sloth-agent
fi
i=0
until systemctl is-active --quiet sloth-agent; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
        echo "install-agent.sh: sloth-agent did not start:" >&2
        journalctl -u sloth-agent -n 20 --no-pager >&2 || true
        exit 1
    fi
    sleep 0.1
done
echo "installed $version for $name (changed:${changed:- nothing}); service active"
[ "$enrolled" = yes ] || echo "now on the master: sloth-master enroll $name"
