#!/usr/bin/env bash
# Runs peapod on this machine for a demo: its own containerd (CRI plugin disabled), a CNI
# bridge network, pause and web server images built from busybox-static, then a pod "demo"
# with a container "web" (busybox httpd) that answers on the pod's IP, its logs, an exec
# into it, peapod's self-check and metrics, and how to point kubelet at peapod.
#
#   sudo bash scripts/run.sh          # set up, start everything, run pod "demo" with "web"
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
WEB_IMAGE=localhost/peapod/web:busybox
WEB_PORT=8080
# peapod's Prometheus endpoint for the demo (left off when the port is taken).
METRICS_ADDRESS=${PEAPOD_DEMO_METRICS:-127.0.0.1:9101}
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

# import_image <name> <mkimage arguments...>: builds the image from busybox-static and
# imports it, unless containerd has it already.
import_image() {
    local name=$1 tar
    shift
    if grep -qxF "$name" <<<"$(ctr_ images ls -q)"; then
        say "image $name already imported"
        return
    fi
    say "building the image $name from busybox-static"
    tar="$WORK/$(basename "${name%%:*}").oci.tar"
    cargo run --quiet --release --example mkimage -- --name "$name" "$@" --out "$tar"
    ctr_ images import "$tar"
}

import_images() {
    # A pause stand-in: PID 1 that sleeps and exits on TERM (as the test rig's).
    import_image "$PAUSE_IMAGE" --entrypoint /bin/sh --entrypoint -c \
        --entrypoint "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait \$!; done"
    # A web server: busybox httpd in the foreground, logging each request to stderr.
    printf '<h1>Hello from a pod run by peapod</h1>\n' >"$WORK/index.html"
    import_image "$WEB_IMAGE" --file "www/index.html=$WORK/index.html" \
        --entrypoint httpd --entrypoint -f --entrypoint -v \
        --entrypoint -p --entrypoint "$WEB_PORT" --entrypoint -h --entrypoint /www
}

# peapod's settings for the demo, shared by the daemon and `peapod check`.
peapod_flags() {
    PEAPOD_FLAGS=(
        --listen "$SOCKET"
        --state-dir "$WORK/peapod"
        --containerd-socket "$CTRD_SOCK"
        --namespace "$NS"
        --cni-conf-dir "$CNI_CONF_DIR"
        --cni-bin-dir /opt/cni/bin --cni-bin-dir /usr/lib/cni
        --netns-dir "$WORK/netns"
        --sandbox-image "$PAUSE_IMAGE"
    )
}

start_peapod() {
    if alive "$WORK/peapod.pid"; then
        say "peapod already running (pid $(cat "$WORK/peapod.pid"))"
        return
    fi
    if [ -S "$SOCKET" ] && "$PEAPODCTL" --endpoint "$SOCKET" --timeout 2 version >/dev/null 2>&1; then
        die "something else already serves the CRI on $SOCKET; stop it or set PEAPOD_SOCKET"
    fi
    local metrics=()
    rm -f "$WORK/metrics.address"
    if (exec 3<>"/dev/tcp/${METRICS_ADDRESS%:*}/${METRICS_ADDRESS##*:}") 2>/dev/null; then
        warn "$METRICS_ADDRESS is taken: peapod runs without its metrics endpoint (set PEAPOD_DEMO_METRICS)"
    else
        metrics=(--metrics-address "$METRICS_ADDRESS")
        echo "$METRICS_ADDRESS" >"$WORK/metrics.address"
    fi
    say "starting peapod on $SOCKET (log $WORK/peapod.log)"
    setsid "$PEAPOD" "${PEAPOD_FLAGS[@]}" "${metrics[@]}" \
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
    id=$(ctl runp demo --log-directory "$WORK/pods/demo") || return 1
    echo "$id" >"$WORK/demo-pod.id"
    echo "$id"
}

run_web_container() {
    local pod id
    pod=$(cat "$WORK/demo-pod.id")
    if [ -s "$WORK/demo-web.id" ] && ctl ps | grep -q "^$(cut -c1-13 "$WORK/demo-web.id") .*Running"; then
        say "container web already runs ($(cat "$WORK/demo-web.id"))"
        return 0
    fi
    say "peapodctl run $pod web --image $WEB_IMAGE"
    id=$(ctl run "$pod" web --image "$WEB_IMAGE") || return 1
    echo "$id" >"$WORK/demo-web.id"
    echo "$id"
}

# Fetches the web page from the host through the CNI bridge, retrying while httpd starts.
curl_pod() {
    local i
    for i in $(seq 50); do
        if curl -sS --max-time 2 "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    curl -sS --max-time 5 "$1"
}

show_demo() {
    local pod web ip ok=0
    pod=$(cat "$WORK/demo-pod.id")
    web=$(cat "$WORK/demo-web.id")
    # No early exit from awk: peapodctl must not write into a closed pipe.
    ip=$(ctl inspectp "$pod" | awk '$1 == "IP:" && !ip {ip = $2} END {print ip}')
    say "peapodctl pods; peapodctl ps"
    ctl pods
    ctl ps
    [ -n "$ip" ] || { warn "the demo pod has no IP"; return 1; }
    say "curl http://$ip:$WEB_PORT/   (from the host, through the bridge, to the pod)"
    curl_pod "http://$ip:$WEB_PORT/" || ok=1
    say "peapodctl logs $web   (httpd logs each request to stderr)"
    sleep 0.5
    ctl logs "$web" || ok=1
    say "peapodctl exec $web -- sh -c '...'   (through peapod's streaming server, as kubectl exec)"
    ctl exec "$web" -- sh -c 'echo "hostname: $(hostname)"; ip addr show eth0 | grep inet; ps' || ok=1
    say "peapod check   (what would stop this node from running pods)"
    "$PEAPOD" "${PEAPOD_FLAGS[@]}" check || warn "peapod check found problems (above)"
    if [ -s "$WORK/metrics.address" ]; then
        say "curl http://$(cat "$WORK/metrics.address")/metrics   (a few of peapod's metrics)"
        curl -sS --max-time 5 "http://$(cat "$WORK/metrics.address")/metrics" \
            | grep -E '^peapod_(cri_requests_total\{.*(RunPodSandbox|StartContainer|ExecSync)|pod_sandboxes|containers\{)' || true
    fi
    return $ok
}

cmd_start() {
    require_root
    bash scripts/setup.sh
    add_cargo_to_path
    mkdir -p "$WORK"
    start_containerd
    write_cni_config
    import_images
    peapod_flags
    start_peapod
    say "peapodctl version"
    ctl version
    local ok=0
    run_demo_pod && run_web_container && show_demo || ok=1
    cat <<MSG

peapod is running (pid $(cat "$WORK/peapod.pid")) on $SOCKET, over containerd (pid $(cat "$WORK/containerd.pid")) on $CTRD_SOCK,
with pod "demo" and its container "web" serving on port $WEB_PORT of the pod's IP.
  Logs:     $WORK/peapod.log, $WORK/containerd.log
  Try:      $PEAPODCTL pods | ps | images | inspectp <id> | logs <id> | exec <id> -- <cmd>
            ctr --address $CTRD_SOCK -n $NS containers ls
            crictl --runtime-endpoint unix://$SOCKET pods   (if you have crictl)
  kubelet:  point it at this socket with containerRuntimeEndpoint: unix://$SOCKET and
            cgroupDriver: cgroupfs in its KubeletConfiguration (deploy/kubelet-config.yaml),
            or --container-runtime-endpoint=unix://$SOCKET; then check both agree with
            $PEAPOD check --kubelet-config /var/lib/kubelet/config.yaml
  Stop:     sudo bash scripts/run.sh stop     (removes the demo pod, stops peapod and containerd)
  Clean up: sudo bash scripts/run.sh clean    (stop, then delete $WORK)
MSG
    if [ $ok -ne 0 ]; then
        warn "peapod is serving, but the demo pod did not come up answering (see above and $WORK/peapod.log)"
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
        ctl rmp "$id" && rm -f "$WORK/demo-pod.id" "$WORK/demo-web.id" || warn "RemovePodSandbox failed"
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
    # The socket's directory, and the cgroup parent of pods without one (/peapod), once empty;
    # rmdir leaves them to anyone still using them.
    rmdir "$(dirname "$SOCKET")" 2>/dev/null || true
    local cg
    for cg in /sys/fs/cgroup/peapod /sys/fs/cgroup/*/peapod; do
        [ -d "$cg" ] && rmdir "$cg" 2>/dev/null || true
    done
    say "stopped (state kept in $WORK; 'run.sh clean' deletes it)"
}

cmd_status() {
    alive "$WORK/containerd.pid" && echo "containerd: running (pid $(cat "$WORK/containerd.pid"))" || echo "containerd: stopped"
    alive "$WORK/peapod.pid" && echo "peapod:     running (pid $(cat "$WORK/peapod.pid")) on $SOCKET" || echo "peapod:     stopped"
    if alive "$WORK/peapod.pid"; then ctl pods || true; ctl ps || true; fi
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    clean) cmd_stop; say "deleting $WORK"; rm -rf "$WORK" ;;
    status) cmd_status ;;
    *) die "usage: run.sh [start|stop|clean|status]" ;;
esac
