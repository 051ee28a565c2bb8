#!/usr/bin/env bash
# Makes the two root file systems the e2e stand-in images are imported from (build-images.sh), cached in
# $TALLY_E2E_CACHE/rootfs under a key of this script's hash, the host's local CAs and the mirror:
#
#   slim    debootstrap bookworm minbase + Debian python3, laid out like python:*-slim-bookworm
#   server  the slim tree + Debian's postgresql-15 (uid/gid 999), prometheus, alertmanager, exporters, wget
#
# Prints "KEY SLIM_TAR SERVER_TAR" on stdout, progress on stderr. Needs root and debootstrap.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${TALLY_E2E_CACHE:-/var/cache/tally-e2e}
suite=bookworm

log() { printf 'make-rootfs: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap not installed (scripts/install-test-deps.sh)"

mirror=${TALLY_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -nE 's#^URIs:[[:space:]]+(\S+/debian)/?$#\1#p' | head -n1)
    [[ -n $mirror ]] || mirror=http://deb.debian.org/debian
fi
security=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -nE 's#^URIs:[[:space:]]+(\S+/debian-security)/?$#\1#p' | head -n1)
security=${security:-http://deb.debian.org/debian-security}

# Packages of the server rootfs: the Debian builds of what the upstream images ship.
SERVER_PACKAGES=(postgresql-15 postgresql-client-15 prometheus prometheus-alertmanager
    prometheus-node-exporter prometheus-postgres-exporter prometheus-blackbox-exporter wget)

mkdir -p "$cache/rootfs"
exec 9>"$cache/.lock"
flock 9

key=$( (sha256sum "$here/make-rootfs.sh"; ls /usr/local/share/ca-certificates 2>/dev/null; echo "$suite $mirror") \
    | sha256sum | cut -c1-16)
slim_tar=$cache/rootfs/slim-$key.tar
server_tar=$cache/rootfs/server-$key.tar

slim_up() {
    local root=$1
    # The official image's pip installs anywhere; Debian's refuses outside a venv (PEP 668).
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    for name in python python3 python3.11; do ln -sf /usr/bin/python3.11 "$root/usr/local/bin/$name"; done
    for name in pip pip3 pip3.11; do ln -sf /usr/bin/pip3 "$root/usr/local/bin/$name"; done
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    # The machines reach PyPI through a TLS-inspecting proxy whose CA only the host trusts: the stand-in
    # trusts what the host trusts (Debian's bundle + the host's local CAs), or the app image's pip install
    # could not run. The official image trusts Debian's bundle only.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null 2>&1
    fi
}

slim_down() {
    local root=$1
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache "$root/usr/sbin/policy-rc.d"
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    : >"$root/etc/resolv.conf"
    : >"$root/etc/hostname"
}

pack() {
    tar --numeric-owner --xattrs -C "$1" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$2.partial" .
    mv "$2.partial" "$2"
}

if [[ ! -f $slim_tar || ! -f $server_tar ]]; then
    find "$cache/rootfs" -maxdepth 1 \( -name 'slim-*.tar' -o -name 'server-*.tar' -o -name 'build.*' \) \
        -exec rm -rf {} +
    work=$(mktemp -d "$cache/rootfs/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    log "debootstrap $suite minbase from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
        "$suite" "$work/slim" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    slim_up "$work/slim"
    chroot "$work/slim" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' >"$cache/rootfs/python-version-$key"

    log "server rootfs: ${SERVER_PACKAGES[*]}"
    cp -a "$work/slim" "$work/server"
    root=$work/server
    # The official postgres image's user and group are 999; Debian's package creates its user only if absent.
    chroot "$root" groupadd --system --gid 999 postgres
    chroot "$root" useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres
    mkdir -p "$root/etc/postgresql-common"
    echo 'create_main_cluster = false' >"$root/etc/postgresql-common/createcluster.conf"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod +x "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" apt-get -q update >"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log" >&2; die "apt update"; }
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -q install -y --no-install-recommends \
        "${SERVER_PACKAGES[@]}" >>"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; die "apt install"; }
    chroot "$root" apt-get clean
    slim_down "$root"
    slim_down "$work/slim"
    pack "$work/slim" "$slim_tar"
    pack "$root" "$server_tar"
    rm -rf "$work"
    trap - EXIT
fi

printf '%s %s %s\n' "$key" "$slim_tar" "$server_tar"
