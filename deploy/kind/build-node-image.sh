#!/usr/bin/env bash
# Builds a kind node image whose kubelet runs pods through peapod (deploy/kind/Dockerfile).
# NOT RUN on peapod's own machines (no Docker engine there); run it where kind runs:
#
#   bash deploy/kind/build-node-image.sh [TAG]          # default peapod/kind-node:v1.28.7
#   kind create cluster --image peapod/kind-node:v1.28.7 --config deploy/kind-config.yaml
#
# KIND_NODE_IMAGE picks the kindest/node base (default kindest/node:v1.28.7).
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-peapod/kind-node:v1.28.7}
base=${KIND_NODE_IMAGE:-kindest/node:v1.28.7}

# A release binary built on Debian 12, the base of kindest/node v1.28.
cargo build --release --bin peapod
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# Only what the image needs goes into the build context (not target/, which is gigabytes).
cp target/release/peapod deploy/peapod.service deploy/kind/Dockerfile \
    deploy/kind/kubelet-peapod.conf deploy/kind/crictl.yaml "$ctx/"
docker build --build-arg "KIND_NODE_IMAGE=$base" -t "$tag" "$ctx"
echo "built $tag; now: kind create cluster --image $tag --config deploy/kind-config.yaml"
