#!/usr/bin/env bash
# Provisions Docker, the fallback container runtime, for development and CI, idempotently:
#   scripts/dev-docker.sh          install docker.io, start dockerd, import the busybox test image
#   scripts/dev-docker.sh stop     stop dockerd
#
# dockerd is configured with fixed bridge subnets (never the automatic choice) and user
# namespace remapping, so container root is an unprivileged uid on the host, as with incus.
# Start incus first: dockerd sets the FORWARD policy to DROP if it finds forwarding off, which
# would cut incus containers off; forwarding is switched on here and incusbr0 is let through.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BIP="${TAOS_DOCKER_BIP:-10.201.0.1/24}"
POOLS="${TAOS_DOCKER_POOLS:-10.202.0.0/16}"

[ "$(id -u)" -eq 0 ] || { log "dev-docker.sh must run as root"; exit 1; }

if [ "${1:-}" = stop ]; then
    if [ -f /var/run/docker.pid ]; then
        kill "$(cat /var/run/docker.pid)" 2>/dev/null || true
    fi
    exit 0
fi

if ! command -v dockerd >/dev/null; then
    log "installing docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io \
        >/var/log/taos-docker-install.log 2>&1; then
        cat /var/log/taos-docker-install.log >&2
        exit 1
    fi
fi

mkdir -p /etc/docker
CONFIG="$(printf '{\n  "bip": "%s",\n  "default-address-pools": [{"base": "%s", "size": 24}],\n  "userns-remap": "default"\n}\n' "$BIP" "$POOLS")"
if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$CONFIG" ]; then
    log "writing /etc/docker/daemon.json (bridge $BIP, userns-remap)"
    printf '%s' "$CONFIG" > /etc/docker/daemon.json.tmp
    mv /etc/docker/daemon.json.tmp /etc/docker/daemon.json
    # A running daemon reads the file only at start.
    if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        log "restarting dockerd for the new configuration"
        kill "$(cat /var/run/docker.pid)"
        for _ in $(seq 1 100); do kill -0 "$(cat /var/run/docker.pid 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
    fi
fi

sysctl -qw net.ipv4.ip_forward=1
if ! docker version >/dev/null 2>&1; then
    if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
        systemctl start docker
    else
        log "starting dockerd"
        setsid nohup /usr/sbin/dockerd >/var/log/dockerd.log 2>&1 </dev/null &
    fi
    for _ in $(seq 1 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
    docker version >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; exit 1; }
fi
# incus's bridges: its default one, and the agents' (taos-inet, taos-lan; made by taos-host at
# start, so maybe not yet). What agents may reach is their ACLs' business, not Docker's.
if ip link show incusbr0 >/dev/null 2>&1 && iptables -L DOCKER-USER >/dev/null 2>&1; then
    for bridge in incusbr0 taos-inet taos-lan; do
        iptables -C DOCKER-USER -i "$bridge" -j ACCEPT 2>/dev/null || iptables -I DOCKER-USER -i "$bridge" -j ACCEPT
        iptables -C DOCKER-USER -o "$bridge" -j ACCEPT 2>/dev/null || iptables -I DOCKER-USER -o "$bridge" -j ACCEPT
    done
fi

# The runtime's own tests use a busybox image made from Debian's busybox-static.
if [ "$(docker image inspect -f '{{json .Config.Cmd}}' busybox:latest 2>/dev/null)" != '["/bin/sleep","2147483647"]' ]; then
    command -v busybox >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
    }
    log "importing the busybox test image"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    mkdir -p "$WORK/bin" "$WORK/tmp" "$WORK/root" "$WORK/etc"
    cp "$(command -v busybox)" "$WORK/bin/busybox"
    for applet in $("$WORK/bin/busybox" --list); do
        [ -e "$WORK/bin/$applet" ] || ln -s busybox "$WORK/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$WORK/etc/passwd"
    echo 'root:x:0:' > "$WORK/etc/group"
    chmod 1777 "$WORK/tmp"
    tar -C "$WORK" --numeric-owner -c . | docker import --change 'CMD ["/bin/sleep", "2147483647"]' - busybox:latest >/dev/null
fi
log "docker ready: $(docker version --format '{{.Server.Version}}')"
