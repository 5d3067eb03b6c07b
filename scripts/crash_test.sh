#!/usr/bin/env bash
# The randomized crash test of `srlm run` at full size: the tiny run of the run_cli tests
# (crates/srlm/tests/fixtures/tiny_run.toml) killed with SIGKILL (its whole process group) at
# POINTS seeded random points spread over every stage, rerun after each kill, then compared
# with an uninterrupted run (every JSONL artifact, every model byte for byte). Prints each
# point and where the kill landed. CI runs the same test with 4 points.
#
#   scripts/crash_test.sh [POINTS] [SEED]      # default 24 points, a seed from the clock
#
# A failure prints its seed; rerun with that SEED to replay the same points.
set -euo pipefail
cd "$(dirname "$0")/.."
export SRLM_KILL_POINTS=${1:-24}
[ -n "${2:-}" ] && export SRLM_KILL_SEED=$2
lscpu | grep -m1 'Model name' || true
cargo test --release -p srlm --test crash_kill -- --nocapture 2>&1 | grep -E '^(kill points|point|seed|test |thread|  )|panicked|FAILED|ok$'
