#!/usr/bin/env bash
# Installs the dependencies (scripts/setup.sh) and runs every test: unit tests, and the
# end-to-end tests, each of which starts its own containerd, CNI network and peapod in a
# temporary directory under /var/tmp. Needs root (the end-to-end tests skip without it).
#   sudo bash scripts/test.sh [extra cargo test arguments, e.g. a test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root

bash scripts/setup.sh --no-build
add_cargo_to_path

log=$(mktemp /tmp/peapod-test.XXXXXX.log)
say "cargo test --no-fail-fast --all-targets -- --test-threads=2 $* (output also in $log)"
start=$(date +%s)
set +e
cargo test --no-fail-fast --all-targets -- --test-threads=2 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# Sum the per-binary "test result:" lines.
read -r passed failed ignored < <(cargo_tally "$log")
echo
say "$passed passed, $failed failed, $ignored ignored in $(( $(date +%s) - start ))s"
if [ "$rc" -ne 0 ]; then
    grep -E '^test .* FAILED$|^error' "$log" | sort -u | head -n 50 || true
    warn "tests failed (cargo exit code $rc); full output in $log"
fi
# The last line, plain and alone, is the whole run's tally: cargo's own last "test result"
# line is a target without tests (an example) and says "0 passed".
echo "summary: $passed passed, $failed failed, $ignored skipped"
exit "$rc"
