#!/usr/bin/env bash
# Runs peapod on this machine for a demo: its own containerd (CRI plugin disabled), a CNI
# bridge network, a pause image built from busybox-static, then one pod sandbox.
#
#   sudo bash scripts/run.sh          # set up, start everything, run pod "demo"
#   sudo bash scripts/run.sh stop     # remove the demo pod, stop peapod and containerd
#   sudo bash scripts/run.sh clean    # stop, then delete the work directory
#   sudo bash scripts/run.sh status
#
# Everything lives in $PEAPOD_DEMO_DIR (default /var/lib/peapod-demo): containerd's root,
# state and socket, peapod's state, the CNI config and logs, so a system containerd, if
# any, is left alone. peapod serves on $PEAPOD_SOCKET (default /run/peapod/peapod.sock),
# where peapodctl and crictl look by default.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
. scripts/lib.sh

WORK=${PEAPOD_DEMO_DIR:-/var/lib/peapod-demo}
SOCKET=${PEAPOD_SOCKET:-/run/peapod/peapod.sock}
CTRD_SOCK=$WORK/containerd.sock
NS=k8s.io
PAUSE_IMAGE=localhost/peapod/pause:busybox
BRIDGE=peapod0
PEAPOD=$REPO/target/release/peapod
PEAPODCTL=$REPO/target/release/peapodctl

ctr_() { ctr --address "$CTRD_SOCK" --namespace "$NS" "$@"; }
ctl() { "$PEAPODCTL" --endpoint "$SOCKET" --timeout 60 "$@"; }

alive() { # alive <pidfile>: the process it names is running
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pid() { # stop_pid <pidfile> <name>: SIGTERM, wait up to 15 s, then SIGKILL
    local pid i
    alive "$1" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$2 did not exit after SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$1"
}

start_containerd() {
    if alive "$WORK/containerd.pid"; then
        say "containerd already running (pid $(cat "$WORK/containerd.pid"))"
        return
    fi
    say "starting containerd (config deploy/containerd-config.toml, root $WORK/containerd-root)"
    rm -f "$CTRD_SOCK" "$CTRD_SOCK.ttrpc"
    setsid containerd --config "$REPO/deploy/containerd-config.toml" \
        --root "$WORK/containerd-root" --state "$WORK/containerd-state" \
        --address "$CTRD_SOCK" \
        </dev/null >>"$WORK/containerd.log" 2>&1 &
    echo $! >"$WORK/containerd.pid"
    local i
    for i in $(seq 300); do
        if ctr_ version >/dev/null 2>&1; then
            say "containerd $(ctr_ version 2>/dev/null | awk '/Server:/{s=1} s&&/Version:/&&!p{print $2; p=1}') is up on $CTRD_SOCK"
            return
        fi
        alive "$WORK/containerd.pid" || die "containerd exited; see $WORK/containerd.log:
$(tail -n 20 "$WORK/containerd.log")"
        sleep 0.1
    done
    die "containerd did not answer within 30 s; see $WORK/containerd.log"
}

write_cni_config() {
    if ls /etc/cni/net.d/*.conflist /etc/cni/net.d/*.conf /etc/cni/net.d/*.json >/dev/null 2>&1; then
        CNI_CONF_DIR=/etc/cni/net.d
        say "CNI: using the existing configuration in /etc/cni/net.d"
        return
    fi
    CNI_CONF_DIR=$WORK/cni/net.d
    mkdir -p "$CNI_CONF_DIR" "$WORK/cni/ipam"
    say "CNI: bridge $BRIDGE, 10.88.0.0/16 ($CNI_CONF_DIR/10-peapod.conflist)"
    cat >"$CNI_CONF_DIR/10-peapod.conflist" <<CONF
{
  "cniVersion": "1.0.0",
  "name": "peapod",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.88.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$WORK/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CONF
}

import_pause_image() {
    if grep -qxF "$PAUSE_IMAGE" <<<"$(ctr_ images ls -q)"; then
        say "pause image $PAUSE_IMAGE already imported"
        return
    fi
    say "building the pause image $PAUSE_IMAGE from busybox-static"
    # A pause stand-in: PID 1 that sleeps and exits on TERM (as the test rig's).
    cargo run --quiet --release --example mkimage -- --name "$PAUSE_IMAGE" \
        --entrypoint /bin/sh --entrypoint -c \
        --entrypoint "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait \$!; done" \
        --out "$WORK/pause.oci.tar"
    ctr_ images import "$WORK/pause.oci.tar"
}

start_peapod() {
    if alive "$WORK/peapod.pid"; then
        say "peapod already running (pid $(cat "$WORK/peapod.pid"))"
        return
    fi
    if [ -S "$SOCKET" ] && "$PEAPODCTL" --endpoint "$SOCKET" --timeout 2 version >/dev/null 2>&1; then
        die "something else already serves the CRI on $SOCKET; stop it or set PEAPOD_SOCKET"
    fi
    say "starting peapod on $SOCKET (log $WORK/peapod.log)"
    setsid "$PEAPOD" \
        --listen "$SOCKET" \
        --state-dir "$WORK/peapod" \
        --containerd-socket "$CTRD_SOCK" \
        --namespace "$NS" \
        --cni-conf-dir "$CNI_CONF_DIR" \
        --cni-bin-dir /opt/cni/bin --cni-bin-dir /usr/lib/cni \
        --netns-dir "$WORK/netns" \
        --sandbox-image "$PAUSE_IMAGE" \
        --log-level "${RUST_LOG:-peapod=debug,info}" \
        </dev/null >>"$WORK/peapod.log" 2>&1 &
    echo $! >"$WORK/peapod.pid"
    local i
    for i in $(seq 300); do
        if [ -S "$SOCKET" ] && ctl version >/dev/null 2>&1; then
            return
        fi
        alive "$WORK/peapod.pid" || die "peapod exited at start; see $WORK/peapod.log:
$(tail -n 20 "$WORK/peapod.log")"
        sleep 0.1
    done
    die "peapod did not serve within 30 s; see $WORK/peapod.log"
}

run_demo_pod() {
    if [ -s "$WORK/demo-pod.id" ] && ctl inspectp "$(cat "$WORK/demo-pod.id")" >/dev/null 2>&1; then
        say "pod sandbox demo already exists ($(cat "$WORK/demo-pod.id"))"
        return 0
    fi
    say "peapodctl runp demo"
    local id
    if ! id=$(ctl runp demo --log-directory "$WORK/pods/demo"); then
        return 1
    fi
    echo "$id" >"$WORK/demo-pod.id"
    echo "$id"
}

cmd_start() {
    require_root
    bash scripts/setup.sh
    add_cargo_to_path
    mkdir -p "$WORK"
    start_containerd
    write_cni_config
    import_pause_image
    start_peapod
    say "peapodctl version"
    ctl version
    say "peapodctl info"
    ctl info || true
    local ok=0
    run_demo_pod || ok=1
    say "peapodctl pods"
    ctl pods || ok=1
    cat <<MSG

peapod is running (pid $(cat "$WORK/peapod.pid")) on $SOCKET, over containerd (pid $(cat "$WORK/containerd.pid")) on $CTRD_SOCK.
  Logs:     $WORK/peapod.log, $WORK/containerd.log
  Try:      $PEAPODCTL pods | images | inspectp <id>
            ctr --address $CTRD_SOCK -n $NS containers ls
            crictl --runtime-endpoint unix://$SOCKET pods   (if you have crictl)
  Stop:     sudo bash scripts/run.sh stop     (removes the demo pod, stops peapod and containerd)
  Clean up: sudo bash scripts/run.sh clean    (stop, then delete $WORK)
MSG
    if [ $ok -ne 0 ]; then
        warn "peapod is serving, but the demo pod could not be run (see the error above and $WORK/peapod.log)"
        exit 1
    fi
}

cmd_stop() {
    require_root
    [ -d "$WORK" ] || { say "nothing to stop ($WORK does not exist)"; return; }
    if alive "$WORK/peapod.pid" && [ -s "$WORK/demo-pod.id" ]; then
        local id
        id=$(cat "$WORK/demo-pod.id")
        say "removing the demo pod $id"
        ctl stopp "$id" || warn "StopPodSandbox failed"
        ctl rmp "$id" && rm -f "$WORK/demo-pod.id" || warn "RemovePodSandbox failed"
    fi
    stop_pid "$WORK/peapod.pid" peapod
    if alive "$WORK/containerd.pid"; then
        # Whatever peapod left running: kill and delete the tasks so no shim outlives containerd.
        local t
        for t in $(ctr_ tasks ls -q 2>/dev/null); do
            warn "task $t still running; killing it"
            ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
        done
        sleep 0.5
        for t in $(ctr_ tasks ls -q 2>/dev/null); do
            ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true
        done
    fi
    stop_pid "$WORK/containerd.pid" containerd
    # Shims of this containerd carry its socket path on their command line.
    local pids
    pids=$(pgrep -f -- "-address $CTRD_SOCK" || true)
    if [ -n "$pids" ]; then
        warn "killing leftover shims: $pids"
        kill -KILL $pids 2>/dev/null || true
    fi
    # Netns pins, container root filesystems, shm mounts: deepest first.
    local m
    awk -v w="$WORK/" 'index($5, w) == 1 {print length($5), $5}' /proc/self/mountinfo \
        | sort -rn | cut -d' ' -f2- | while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done
    if [ -f "$WORK/cni/net.d/10-peapod.conflist" ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" || true
    fi
    rm -f "$CTRD_SOCK" "$CTRD_SOCK.ttrpc"
    say "stopped (state kept in $WORK; 'run.sh clean' deletes it)"
}

cmd_status() {
    alive "$WORK/containerd.pid" && echo "containerd: running (pid $(cat "$WORK/containerd.pid"))" || echo "containerd: stopped"
    alive "$WORK/peapod.pid" && echo "peapod:     running (pid $(cat "$WORK/peapod.pid")) on $SOCKET" || echo "peapod:     stopped"
    if alive "$WORK/peapod.pid"; then ctl pods || true; fi
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    clean) cmd_stop; say "deleting $WORK"; rm -rf "$WORK" ;;
    status) cmd_status ;;
    *) die "usage: run.sh [start|stop|clean|status]" ;;
esac
