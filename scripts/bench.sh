#!/usr/bin/env bash
# Benchmarks: builds once in release, then runs target/release/sloth-bench, which
# starts real agents (each on its own 127.1.x.y address), drives
# target/release/sloth-master with the scripts in scripts/bench/, measures bare-quinn
# baselines in its own process, and prints ONE table (median, p99 where it applies,
# ratio to the baseline row, target).
#
# Usage: scripts/bench.sh [--quick] [--agents N] [--reps R] [--fanout M] [--peers]
#   --quick      seconds-scale run with small N (what CI runs, to keep this working)
#   --agents N   agents for the fan-out, peer and memory rows (default 200)
#   --reps R     repetitions of every measurement, interleaved with its baseline (default 5)
#   --fanout M   agents for the large fan-out rows (default 1000; 0 skips them)
#   --peers      also time pdsh and Ansible over the same hosts. Needs root: see
#                scripts/install-peers.sh (Debian packages when missing, ansible-core in
#                a venv in a temporary directory that is removed at the end).
# See docs/benchmarks.md for what each row measures and the targets.
set -euo pipefail
cd "$(dirname "$0")/.."

peers=0
own_ansible=0
for a in "$@"; do
    if [ "$a" = --peers ]; then peers=1; fi
    case "$a" in --ansible | --ansible=*) own_ansible=1 ;; esac
done

cargo build --release --workspace

if [ "$peers" = 0 ] || [ "$own_ansible" = 1 ]; then
    exec target/release/sloth-bench "$@"
fi
tmp=$(mktemp -d /tmp/sloth-bench-peers.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
bash scripts/install-peers.sh "$tmp"
target/release/sloth-bench "$@" --ansible "$tmp/venv/bin/ansible"
