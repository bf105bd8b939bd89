#!/usr/bin/env bash
# Runs every test: unit and integration tests (real agents over real QUIC, a hostile
# agent), every example in examples/ on a local fleet with its output checked, a fuzz
# smoke run, and the network-fault drills.
# Builds once (debug profile) and reuses the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything recorded in the run history goes to a throwaway state directory, not to
# ~/.local/state of whoever runs the tests.
SLOTH_STATE_DIR=$(mktemp -d /tmp/sloth-test-state.XXXXXX)
export SLOTH_STATE_DIR
cleanup_state() { rm -rf "$SLOTH_STATE_DIR"; }
trap cleanup_state EXIT

cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
bash scripts/run-examples.sh target/debug
bash docs/examples/check.sh target/debug
# The benchmark in its quick mode, on the debug build, so that it keeps working
# (real figures: scripts/bench.sh, release build; see docs/benchmarks.md). As root,
# with its peers too (pdsh and Ansible over real sshd; scripts/install-peers.sh).
if [ "$(id -u)" = 0 ]; then
  peers=$(mktemp -d /tmp/sloth-peers.XXXXXX)
  trap 'rm -rf "$peers"; cleanup_state' EXIT
  bash scripts/install-peers.sh "$peers"
  target/debug/sloth-bench --quick --peers --ansible "$peers/venv/bin/ansible"
else
  target/debug/sloth-bench --quick
fi
# Fuzz smoke: every AFL++ target for 20 s from its seed corpus (builds the targets
# with cargo-afl, installing it when missing; long runs: scripts/fuzz.sh --seconds N).
bash scripts/fuzz.sh --seconds 20
# Network faults on real links (network namespaces, veth, nftables, tbf): needs root.
if [ "$(id -u)" = 0 ]; then
  bash scripts/netfault.sh target/debug
else
  echo "network-fault tests skipped: they need root (network namespaces)"
fi
