#!/usr/bin/env bash
# Installs the peers of the benchmark's fan-out rows (docs/benchmarks.md, --peers):
# pdsh and OpenSSH from Debian when missing, and ansible-core from PyPI into DIR/venv.
#
# Usage: scripts/install-peers.sh DIR    (as root; DIR is the caller's temporary directory)
# Afterwards DIR/venv/bin/ansible exists. The distribution's sshd is kept from starting
# while openssh-server installs (a temporary /usr/sbin/policy-rc.d, removed after; an
# existing one is used as it is), and its ssh.service is disabled, so that it does not
# start at the next boot either. The packages stay installed.
set -euo pipefail

ANSIBLE_CORE="ansible-core==2.19.14"

dir=${1:?usage: install-peers.sh DIR}
if [ "$(id -u)" != 0 ]; then
    echo "install-peers.sh: needs root (it installs packages; the bench runs sshd in a mount namespace)" >&2
    exit 1
fi

policy_made=0
cleanup() {
    if [ "$policy_made" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

need=()
command -v pdsh >/dev/null || need+=(pdsh)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
if ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then
    need+=(openssh-client)
fi
probe=$(mktemp -d)
if ! python3 -m venv "$probe/v" >/dev/null 2>&1; then need+=(python3-venv); fi
rm -rf "$probe"
if [ "${#need[@]}" -gt 0 ]; then
    echo "[install-peers] installing ${need[*]} (Debian)" >&2
    apt-get update -q >/dev/null
    # Installing openssh-server must not start the distribution's sshd on port 22.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_made=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    if [[ " ${need[*]} " == *" openssh-server "* ]] && command -v systemctl >/dev/null; then
        systemctl disable ssh.service >/dev/null 2>&1 || true
    fi
fi
echo "[install-peers] installing $ANSIBLE_CORE into $dir/venv (PyPI)" >&2
python3 -m venv "$dir/venv"
"$dir/venv/bin/pip" install -q --disable-pip-version-check "$ANSIBLE_CORE"
# Read whole, then cut: `| head -1` closed the pipe while ansible still wrote, which
# it reports as a crash (exit 250) that failed the run under pipefail.
version=$("$dir/venv/bin/ansible" --version 2>/dev/null)
echo "${version%%$'\n'*}" >&2
