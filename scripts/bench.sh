#!/usr/bin/env bash
# Benchmarks (issue #6): builds once in release, then runs target/release/sloth-bench,
# which starts real agents, drives target/release/sloth-master with the scripts in
# scripts/bench/, measures bare-quinn baselines in its own process, and prints ONE
# table (median, p99 where it applies, ratio to the baseline row, target).
#
# Usage: scripts/bench.sh [--quick] [--agents N] [--reps R]
#   --quick      seconds-scale run with small N (what CI runs, to keep this working)
#   --agents N   agents for the fan-out and memory rows (default 200)
#   --reps R     repetitions of every measurement, interleaved with its baseline (default 5)
# See docs/benchmarks.md for what each row measures and the targets.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace
exec target/release/sloth-bench "$@"
