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
