#!/usr/bin/env bash
# Provisions incus for development and CI, idempotently:
#   scripts/dev-incus.sh            install, start the daemons, initialise, import the busybox image
#   scripts/dev-incus.sh --debian   also build and import the Debian bookworm image (~2 minutes)
#   scripts/dev-incus.sh stop       shut incus down (instances, pools, daemons)
#
# incus comes from bookworm-backports as `incus-base` (not `incus`, which drags in qemu; VMs
# can't run here anyway). The daemons are started by hand when systemd is not PID 1. incus is
# initialised with a preseed naming a fixed bridge subnet: `incus admin init --minimal` and
# `ipv4.address=auto` probe random private addresses, which is forbidden on these machines.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SUBNET="${TAOS_INCUS_SUBNET:-10.200.0.1/24}"
POOL_SIZE="${TAOS_INCUS_POOL_SIZE:-20GiB}"
SOCKET=/var/lib/incus/unix.socket

need_root() {
    [ "$(id -u)" -eq 0 ] || { log "dev-incus.sh must run as root"; exit 1; }
}

stop_incus() {
    if [ -S "$SOCKET" ] && command -v incus >/dev/null; then
        log "shutting incus down"
        incus admin shutdown --timeout 60 >/dev/null 2>&1 || true
    fi
    if [ -f /run/lxcfs.pid ]; then
        kill "$(cat /run/lxcfs.pid)" 2>/dev/null || true
        rm -f /run/lxcfs.pid
    fi
    fusermount -u /var/lib/lxcfs 2>/dev/null || umount -l /var/lib/lxcfs 2>/dev/null || true
}

install_packages() {
    if ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
        if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
            local uri
            uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
            uri="${uri:-http://deb.debian.org/debian}"
            log "adding bookworm-backports from $uri"
            printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                "$uri" > /etc/apt/sources.list.d/bookworm-backports.sources
            APT_UPDATED=""
        fi
    fi
    local missing=()
    for pkg in incus-base dnsmasq-base btrfs-progs busybox-static debootstrap; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    # Lets a container's uid 1000 map to the host's 1000 if a raw.idmap ever asks for it.
    grep -qs '^root:1000:1$' /etc/subuid || echo 'root:1000:1' >> /etc/subuid
    grep -qs '^root:1000:1$' /etc/subgid || echo 'root:1000:1' >> /etc/subgid
}

raise_limits() {
    # Every container's root maps to the same host uid range, so systemd in all of them shares
    # one per-user inotify budget; Debian's default of 128 instances stops the ~14th container
    # from booting. These are incus's production recommendations.
    sysctl -qw fs.inotify.max_user_instances=1048576 fs.inotify.max_user_watches=1048576 \
        fs.inotify.max_queued_events=1048576 2>/dev/null || log "could not raise inotify limits"
}

start_daemons() {
    if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
        systemctl start lxcfs incus.socket incus.service 2>/dev/null || systemctl start incus
        return
    fi
    # A FUSE mount left by a killed lxcfs answers "Transport endpoint is not connected" to
    # everything, mkdir included, so it goes first.
    if grep -qs ' /var/lib/lxcfs ' /proc/mounts && ! ls /var/lib/lxcfs >/dev/null 2>&1; then
        log "removing the dead lxcfs mount left by a killed lxcfs"
        fusermount -u /var/lib/lxcfs 2>/dev/null || umount -l /var/lib/lxcfs 2>/dev/null || true
        rm -f /run/lxcfs.pid
    fi
    mkdir -p /var/lib/lxcfs /var/log/incus
    if ! { [ -f /run/lxcfs.pid ] && kill -0 "$(cat /run/lxcfs.pid)" 2>/dev/null; }; then
        log "starting lxcfs"
        setsid nohup /usr/bin/lxcfs /var/lib/lxcfs >/var/log/lxcfs.log 2>&1 </dev/null &
        echo $! > /run/lxcfs.pid
    fi
    if ! { [ -f /run/incusd.pid ] && kill -0 "$(cat /run/incusd.pid)" 2>/dev/null; }; then
        log "starting incusd"
        PATH=/usr/libexec/incus:$PATH setsid nohup /usr/libexec/incus/incusd --group incus-admin \
            --logfile=/var/log/incus/incus.log >/var/log/incus/incusd.out 2>&1 </dev/null &
        echo $! > /run/incusd.pid
    fi
    incus admin waitready --timeout=60
}

initialise() {
    if incus network show incusbr0 >/dev/null 2>&1 && incus storage show default >/dev/null 2>&1; then
        return
    fi
    log "initialising incus (bridge $SUBNET, btrfs pool $POOL_SIZE)"
    local driver=btrfs
    command -v mkfs.btrfs >/dev/null || driver=dir
    local pool_config="{size: $POOL_SIZE}"
    [ "$driver" = dir ] && pool_config="{}"
    incus admin init --preseed <<YAML
networks:
- name: incusbr0
  type: bridge
  config: {ipv4.address: $SUBNET, ipv4.nat: "true", ipv6.address: none}
storage_pools:
- name: default
  driver: $driver
  config: $pool_config
profiles:
- name: default
  devices:
    root: {path: /, pool: default, type: disk}
    eth0: {name: eth0, network: incusbr0, type: nic}
YAML
}

repair_quota_accounting() {
    # Deleting many containers can leave btrfs quota accounting marked inconsistent (then usage
    # reads wrong and limits aren't enforced); a rescan takes milliseconds.
    local mount=/var/lib/incus/storage-pools/default
    if command -v btrfs >/dev/null && btrfs qgroup show "$mount" 2>&1 | grep -q inconsistent; then
        log "rescanning btrfs quota accounting"
        btrfs quota rescan -w "$mount" >/dev/null 2>&1 || true
    fi
}

build_busybox_image() {
    incus image show busybox >/dev/null 2>&1 && return
    log "building the busybox test image"
    local work
    work="$(mktemp -d)"
    mkdir -p "$work/rootfs"/{bin,sbin,etc/init.d,proc,sys,dev,tmp,root,run,var/log,usr/bin,usr/sbin,usr/share/udhcpc}
    cp /bin/busybox "$work/rootfs/bin/busybox"
    for applet in $("$work/rootfs/bin/busybox" --list-full); do
        [ -e "$work/rootfs/$applet" ] || ln -s /bin/busybox "$work/rootfs/$applet"
    done
    cat > "$work/rootfs/etc/inittab" <<'TAB'
::sysinit:/etc/init.d/rcS
::respawn:/sbin/getty -n -l /bin/sh 38400 console
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
TAB
    cat > "$work/rootfs/etc/init.d/rcS" <<'RCS'
#!/bin/sh
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
ip link set lo up
udhcpc -b -q -i eth0 -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
RCS
    cat > "$work/rootfs/usr/share/udhcpc/default.script" <<'DHCP'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
DHCP
    chmod +x "$work/rootfs/etc/init.d/rcS" "$work/rootfs/usr/share/udhcpc/default.script"
    echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
    echo 'root:x:0:' > "$work/rootfs/etc/group"
    cat > "$work/metadata.yaml" <<META
architecture: $(uname -m)
creation_date: $(date +%s)
properties: {description: taos busybox test image, os: busybox, release: static}
META
    tar -C "$work" -czf "$work/busybox.tar.gz" metadata.yaml rootfs
    incus image import "$work/busybox.tar.gz" --alias busybox >/dev/null
    rm -rf "$work"
}

build_debian_image() {
    incus image show debian-bookworm >/dev/null 2>&1 && return
    log "building the Debian bookworm image (debootstrap, about two minutes)"
    local work uri
    work="$(mktemp -d)"
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    debootstrap --variant=minbase \
        --include=systemd-sysv,systemd-resolved,udev,dbus,iproute2,ca-certificates \
        bookworm "$work/rootfs" "${uri:-http://deb.debian.org/debian}" >/dev/null
    mkdir -p "$work/rootfs/etc/systemd/network"
    printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > "$work/rootfs/etc/systemd/network/eth0.network"
    chroot "$work/rootfs" systemctl enable systemd-networkd systemd-resolved >/dev/null 2>&1 || true
    ln -sf /run/systemd/resolve/stub-resolv.conf "$work/rootfs/etc/resolv.conf"
    : > "$work/rootfs/etc/machine-id"
    cat > "$work/metadata.yaml" <<META
architecture: $(uname -m)
creation_date: $(date +%s)
properties: {description: taos Debian bookworm agent base, os: debian, release: bookworm}
META
    tar -C "$work" --numeric-owner -czf "$work/debian.tar.gz" metadata.yaml rootfs
    incus image import "$work/debian.tar.gz" --alias debian-bookworm >/dev/null
    rm -rf "$work"
}

case "${1:-}" in
    stop) need_root; stop_incus; exit 0 ;;
esac
need_root
install_packages
raise_limits
start_daemons
initialise
repair_quota_accounting
build_busybox_image
[ "${1:-}" = "--debian" ] && build_debian_image
log "incus ready: $(incus version 2>/dev/null | tr '\n' ' ')"
