#!/usr/bin/env bash
# The fresh-machine check: does the README's set-up step pass on a fresh Debian 12 machine?
# Nothing a developer's machine already has can help it:
#   1. debootstrap a minimal Debian 12 root (--variant=minbase: essential packages and apt)
#      into a temporary folder under /var/tmp, with the apt sources a Debian 12 install has
#      (bookworm, bookworm-updates, bookworm-security) on this machine's mirror, and the
#      network settings a machine here has (resolv.conf, local CA certificates);
#   2. put a clean clone of the project's HEAD in it (committed work only, no target/);
#   3. chroot into it (/proc, /sys and /dev mounted, unmounted again on every exit path)
#      with an emptied environment, and run `bash scripts/setup.sh --no-build` (packages and
#      toolchain, as the README's commands do), then `bash scripts/setup.sh` (cargo build).
# If no toolchain can be installed the README's way, it stops after the package step and
# says so, and fails under CI=true.
#   sudo bash scripts/fresh-check.sh [--keep] [--ref COMMIT]
#   (--keep: leave the root for a look; --ref: check that commit instead of HEAD)
# The debootstrap download is cached as a tarball of Debian's .debs in target/fresh-check/
# (refreshed after 7 days); the root itself is always built anew.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root

keep=0
ref=HEAD
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1 ;;
        --ref)
            [ $# -ge 2 ] || die "--ref needs a commit"
            ref=$2
            shift
            ;;
        *) die "unknown argument: $1 (usage: fresh-check.sh [--keep] [--ref COMMIT])" ;;
    esac
    shift
done

repo=$PWD
mirror=$(debian_mirror)
security=${PEAPOD_DEBIAN_SECURITY_MIRROR:-${mirror}-security}
cache=$repo/target/fresh-check
tarball=$cache/bookworm-minbase.tgz
t0=$(date +%s)
phase_start=$t0
timings=()
phase() { # phase <name>: closes the previous phase's timer
    local now
    now=$(date +%s)
    timings+=("$1 $((now - phase_start))s")
    phase_start=$now
}

command -v debootstrap >/dev/null || {
    say "installing debootstrap (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null; } \
        || die "cannot install debootstrap"
}

root=$(mktemp -d /var/tmp/peapod-fresh.XXXXXX)
mounted=()
cleanup() {
    local rc=$? i
    # Deepest first; a lazy unmount if a process still holds one.
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null \
            || warn "cannot unmount ${mounted[$i]}"
    done
    # Anything still mounted below the root (the build may have mounted more) goes too,
    # and nothing is deleted while a mount remains.
    local m left
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v r="$root/" 'index($5, r) == 1 {print length($5), $5}' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
    left=$(awk -v r="$root/" 'index($5, r) == 1' /proc/self/mountinfo)
    if [ -n "$left" ]; then
        warn "mounts remain under $root; not deleting it"
    elif [ "$keep" -eq 1 ]; then
        say "kept the root in $root"
    else
        rm -rf --one-file-system "$root"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The root.
mkdir -p "$cache"
if [ -f "$tarball" ] && [ -n "$(find "$tarball" -mtime -7)" ]; then
    say "debootstrap: Debian's packages from the cache ($tarball)"
else
    say "debootstrap: downloading Debian 12's minimal package set from $mirror"
    rm -f "$tarball"
    # Downloads and verifies (Release signature, hashes) the packages only.
    debootstrap --variant=minbase --make-tarball="$tarball.tmp" bookworm "$root/tarball-work" "$mirror" \
        >"$cache/debootstrap-download.log" 2>&1 \
        || die "debootstrap --make-tarball failed; see $cache/debootstrap-download.log"
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root/tarball-work"
fi
say "debootstrap: installing the minimal Debian 12 root in $root"
debootstrap --variant=minbase --unpack-tarball="$tarball" bookworm "$root" "$mirror" \
    >"$cache/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $cache/debootstrap.log"
# What a Debian 12 installation's apt sources are; DNS as the host resolves.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The network's own trust anchors (e.g. a TLS-inspecting egress proxy's CA), which any machine
# on this network carries; ca-certificates, installed by setup.sh, adds them to the bundle.
local_cas=(/usr/local/share/ca-certificates/*.crt)
if [ -e "${local_cas[0]}" ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -L "${local_cas[@]}" "$root/usr/local/share/ca-certificates/"
    say "network: copied ${#local_cas[@]} local CA certificate(s) from /usr/local/share/ca-certificates"
fi
phase debootstrap

# 2. The project: a clone of HEAD (or --ref), so only what is committed is checked.
head=$(git rev-parse --verify "$ref^{commit}") || die "no commit $ref"
if [ "$ref" = HEAD ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    warn "uncommitted changes are not part of the check: it checks HEAD ($head)"
fi
git clone --quiet --no-checkout "$repo" "$root/root/peapod"
git -C "$root/root/peapod" checkout --quiet --detach "$head"
say "project: clone of $head in /root/peapod"

# 3. The set-up, inside.
for m in proc sys dev; do
    mkdir -p "$root/$m"
done
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
mount --bind /dev "$root/dev" && mounted+=("$root/dev")
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" && mounted+=("$root/dev/pts")

inside() { # inside <command...>: in the chroot, as root, with a fresh machine's environment
    chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        ${CI:+CI=$CI} "$@"
}

say "inside: bash scripts/setup.sh --no-build (Debian packages and the toolchain)"
if ! inside bash -c 'cd /root/peapod && bash scripts/setup.sh --no-build'; then
    phase packages
    printf '%s\n' "${timings[@]}"
    die "fresh-check: the README's set-up (scripts/setup.sh --no-build) FAILED on a fresh Debian 12 root"
fi
phase packages+toolchain

if ! inside bash -c '. /root/peapod/scripts/lib.sh; add_cargo_to_path; command -v cargo >/dev/null'; then
    printf '%s\n' "${timings[@]}"
    if [ "${CI:-}" = true ]; then
        die "fresh-check: packages installed, but no Rust toolchain could be installed the README's way; cargo build NOT checked"
    fi
    warn "fresh-check: packages installed, but no Rust toolchain could be installed the README's way"
    warn "fresh-check: stopped after the package step; cargo build was NOT checked"
    exit 0
fi

say "inside: bash scripts/setup.sh (cargo build --release)"
if ! inside bash -c 'cd /root/peapod && bash scripts/setup.sh'; then
    phase build
    printf '%s\n' "${timings[@]}"
    die "fresh-check: cargo build FAILED on a fresh Debian 12 root"
fi
phase build
inside /root/peapod/target/release/peapod --version >/dev/null \
    || die "fresh-check: the built peapod does not run"

say "fresh-check timings: ${timings[*]}"
echo "fresh-check: passed on a fresh Debian 12 root (packages, toolchain, cargo build) in $(( $(date +%s) - t0 ))s"
