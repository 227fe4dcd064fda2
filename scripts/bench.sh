#!/usr/bin/env bash
# Benchmarks peapod against containerd's built-in CRI plugin, side by side in one run
# (examples/bench.rs), and prints a table of ratios (peapod / containerd-cri).
#   sudo bash scripts/bench.sh [--quick] [-n PODS] [--running N] [--large N] [--cycles N] [--out FILE]
# The defaults are the full figures (several minutes); --quick checks the benchmark itself.
# `target/release/examples/bench --help` lists every setting. Default output file:
# target/bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root
add_cargo_to_path

say "cargo build --release --examples --bins"
cargo build --release --examples --bins
out=()
case " $* " in
    *" --out "*|*" --out="*) ;;
    *) out=(--out target/bench.json) ;;
esac
say "running the benchmark (containerd $(containerd --version | awk '{print $3}'))"
PEAPOD_BIN=$(pwd)/target/release/peapod exec target/release/examples/bench "${out[@]}" "$@"
