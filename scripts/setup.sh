#!/usr/bin/env bash
# Installs what peapod needs to build, run and test on Debian 12, then builds it.
# Idempotent: packages already installed are not fetched again.
#   sudo bash scripts/setup.sh            # install + cargo build --release
#   sudo bash scripts/setup.sh --no-build # install only
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_root

build=1
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        *) die "unknown argument: $a (usage: setup.sh [--no-build])" ;;
    esac
done

# Why each package:
#   containerd runc                  the container engine peapod drives, and its OCI runtime
#   containernetworking-plugins      CNI plugins (bridge, host-local, portmap, ...) in /usr/lib/cni
#   busybox-static                   tests and the demo build their images from /bin/busybox
#   protobuf-compiler                protoc, used by build.rs to compile the CRI proto
#   iptables iproute2 util-linux     portmap rules, `ip`/netns, nsenter/mount for tests
#   docker-registry                  a local OCI registry for the PullImage tests
#   ca-certificates curl             registry TLS; fetching rustup if cargo is missing
#   build-essential pkg-config       the C toolchain and linker Rust needs
#   xz-utils                         unpacks kubelet and crictl from ../shared/bin for the tests
packages=(containerd runc containernetworking-plugins busybox-static protobuf-compiler
    iptables iproute2 docker-registry util-linux ca-certificates curl build-essential
    pkg-config xz-utils)

missing=()
for p in "${packages[@]}"; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages: all ${#packages[@]} already installed"
else
    say "Debian packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    for p in "${missing[@]}"; do
        # Fail early and clearly if this is not a Debian 12 archive.
        # Capture first: `apt-cache ... | grep -q` under pipefail fails when grep exits at
        # its first match and apt-cache dies of SIGPIPE.
        policy=$(apt-cache policy "$p")
        grep -q 'Candidate: [^(]' <<<"$policy" \
            || die "package $p has no installation candidate (is this Debian 12 with apt sources set?)"
    done
    apt-get install -y "${packages[@]}"
fi

add_cargo_to_path
if ! command -v cargo >/dev/null 2>&1; then
    if curl -fsS --max-time 15 https://sh.rustup.rs -o /tmp/rustup-init.sh 2>/dev/null; then
        say "cargo not found: installing the stable toolchain with rustup"
        sh /tmp/rustup-init.sh -y --profile minimal
        add_cargo_to_path
    else
        # Debian 12's own rustc and cargo (1.63) are too old for peapod's dependencies;
        # rustc-web and cargo-web are the toolchain Debian 12 keeps current for building its
        # browsers (1.85 in bookworm, newer in bookworm-security), as /usr/bin/rustc and cargo.
        say "cargo not found and rustup is unreachable: installing Debian's rustc-web and cargo-web"
        DEBIAN_FRONTEND=noninteractive apt-get install -y rustc-web cargo-web
    fi
fi
say "toolchain: $(cargo --version), $(rustc --version 2>/dev/null || echo 'rustc ?')"
say "containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), $(protoc --version)"

if [ "$build" -eq 1 ]; then
    say "cargo build --release (peapod, peapodctl, examples)"
    cargo build --release --bins --examples
    say "built: target/release/peapod target/release/peapodctl"
fi
