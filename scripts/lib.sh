# Shared helpers for scripts/*.sh (sourced, not run).

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# rustup installs cargo into ~/.cargo/bin, which `sudo` drops from PATH.
add_cargo_to_path() {
    local d
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
        if [ -x "$d/cargo" ] && ! command -v cargo >/dev/null 2>&1; then
            export PATH="$d:$PATH"
        fi
    done
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo bash $0): peapod and containerd manage namespaces, mounts and cgroups"
}

# The Debian archive this machine's apt uses (first "/debian" URI of its sources), for
# debootstrap and for Debian 13 downloads; PEAPOD_DEBIAN_MIRROR overrides. One awk over
# the files, no pipeline: an early `exit` in a pipe would SIGPIPE the writer (pipefail).
debian_mirror() {
    if [ -n "${PEAPOD_DEBIAN_MIRROR:-}" ]; then
        echo "${PEAPOD_DEBIAN_MIRROR%/}"
        return
    fi
    local m f files=()
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
        [ -f "$f" ] && files+=("$f")
    done
    m=
    if [ ${#files[@]} -gt 0 ]; then
        m=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { sub(/\/$/, "", $i); print $i; exit } }' \
            "${files[@]}" || true)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

# Sums the per-binary "test result:" lines of a cargo test log: prints "passed failed ignored".
# With "e2e", only the end-to-end binaries (those cargo announces as "Running tests/...");
# with "unit", only the others (unit tests, doc-tests).
cargo_tally() {
    awk -v want="${2:-all}" '
        /^ *Running / { sec = ($2 ~ /^tests\//) ? "e2e" : "unit" }
        /^ *Doc-tests / { sec = "unit" }
        /^test result:/ && (want == "all" || want == sec) {
            for (i = 1; i <= NF; i++) {
                if ($(i+1) ~ /^passed/) p += $i
                if ($(i+1) ~ /^failed/) f += $i
                if ($(i+1) ~ /^ignored/) g += $i
            }
        } END { print p+0, f+0, g+0 }' "$1"
}
