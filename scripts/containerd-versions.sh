#!/usr/bin/env bash
# Prepares the three containerd versions the end-to-end suites run against, without
# installing anything over Debian 12's own containerd:
#   1.6  Debian 12's package, installed by scripts/setup.sh      -> /usr/bin/containerd
#   1.7  Debian 13's package: `apt-get download` with an apt state of its own under
#        target/containerd/apt (the system's sources, lists and dpkg status are never
#        read or written), unpacked with `dpkg-deb -x`           -> target/containerd/1.7/usr/bin
#   2.1  the static binaries in ../shared/bin (PEAPOD_SHARED_BIN), checksums verified
#                                                                 -> target/containerd/2.1/bin
# Prints one line per version, "<version> <path to containerd>", on stdout (progress goes
# to stderr); run a suite against one with PEAPOD_TEST_CONTAINERD=<path to containerd>.
#   bash scripts/containerd-versions.sh [1.6] [1.7] [2.1]    # default: all three
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

root=$PWD
out=$root/target/containerd
shared_bin=${PEAPOD_SHARED_BIN:-$root/../shared/bin}
# Debian 13's archive, from the mirror this machine already uses for Debian 12.
mirror=$(debian_mirror)

log() { say "$@" >&2; }

# "containerd github.com/containerd/containerd 1.7.24~ds1 ..." -> 1.7.24
version_of() {
    local v
    v=$("$1" --version | awk '{print $3}')
    v=${v#v}
    echo "${v%%[~+-]*}"
}

prepare_16() {
    local bin
    bin=$(command -v containerd) || die "containerd 1.6 is not installed (bash scripts/setup.sh --no-build)"
    command -v ctr >/dev/null || die "ctr is not installed (Debian's containerd package ships it)"
    command -v containerd-shim-runc-v2 >/dev/null || die "containerd-shim-runc-v2 is not installed"
    echo "$(version_of "$bin") $bin"
}

prepare_17() {
    local apt=$out/apt dest=$out/1.7
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc" "$apt/deb"
    : >"$apt/status"
    cat >"$apt/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
EOF
    # Every path apt would read or write points into $apt; no other index targets
    # (Contents, DEP-11) are fetched.
    local opts=(
        -o Dir::Etc::SourceList="$apt/etc/sources.list"
        -o Dir::Etc::SourceParts=/dev/null
        -o Dir::Etc::Preferences=/dev/null
        -o Dir::Etc::PreferencesParts=/dev/null
        -o Dir::State::Lists="$apt/lists"
        -o Dir::State::status="$apt/status"
        -o Dir::State::extended_states="$apt/extended_states"
        -o Dir::Cache="$apt/cache"
        -o Dir::Cache::archives="$apt/cache/archives"
        -o APT::Architecture=amd64
        -o APT::Sandbox::User=root
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false
        -o Debug::NoLocking=1
    )
    log "containerd 1.7: Debian 13 (trixie) package from $mirror, apt state in $apt"
    apt-get -q "${opts[@]}" update >&2
    local cand
    cand=$(apt-cache "${opts[@]}" policy containerd | awk '/Candidate:/ {print $2}')
    case "$cand" in
        1.7.*) ;;
        *) die "Debian 13 offers containerd '${cand:-none}', not 1.7.x" ;;
    esac
    rm -f "$apt/deb"/*.deb
    (cd "$apt/deb" && apt-get -q "${opts[@]}" download "containerd=$cand" >&2)
    local deb
    deb=$(echo "$apt/deb"/containerd_*.deb)
    [ -f "$deb" ] || die "apt-get download left no containerd .deb in $apt/deb"
    rm -rf "$dest"
    mkdir -p "$dest"
    dpkg-deb -x "$deb" "$dest"
    local bin=$dest/usr/bin/containerd b
    for b in containerd ctr containerd-shim-runc-v2; do
        [ -x "$dest/usr/bin/$b" ] || die "$deb has no /usr/bin/$b"
    done
    local v
    v=$(version_of "$bin")
    case "$v" in 1.7.*) ;; *) die "$bin says it is $v, not 1.7" ;; esac
    echo "$v $bin"
}

prepare_21() {
    local dest=$out/2.1/bin b
    [ -f "$shared_bin/SHA256SUMS" ] || die "no $shared_bin/SHA256SUMS (set PEAPOD_SHARED_BIN to the folder with containerd.xz)"
    mkdir -p "$dest"
    for b in containerd containerd-shim-runc-v2 ctr; do
        [ -f "$shared_bin/$b.xz" ] || die "no $shared_bin/$b.xz"
        xz -dc "$shared_bin/$b.xz" >"$dest/$b.tmp"
        mv "$dest/$b.tmp" "$dest/$b"
        chmod 0755 "$dest/$b"
    done
    # SHA256SUMS lists the uncompressed files; check exactly our three.
    local sums
    sums=$(grep -E '  (containerd|containerd-shim-runc-v2|ctr)$' "$shared_bin/SHA256SUMS") \
        || die "$shared_bin/SHA256SUMS lists none of containerd, containerd-shim-runc-v2, ctr"
    [ "$(wc -l <<<"$sums")" -eq 3 ] || die "$shared_bin/SHA256SUMS lacks one of containerd, containerd-shim-runc-v2, ctr"
    (cd "$dest" && sha256sum --quiet -c - <<<"$sums" >&2) || die "checksum mismatch in $dest"
    log "containerd 2.1: unpacked from $shared_bin into $dest, checksums verified"
    local v
    v=$(version_of "$dest/containerd")
    case "$v" in 2.1.*) ;; *) die "$dest/containerd says it is $v, not 2.1" ;; esac
    echo "$v $dest/containerd"
}

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(1.6 1.7 2.1)
for w in "${wanted[@]}"; do
    case "$w" in
        1.6) prepare_16 ;;
        1.7) prepare_17 ;;
        2.1) prepare_21 ;;
        *) die "unknown containerd version $w (1.6, 1.7 or 2.1)" ;;
    esac
done
