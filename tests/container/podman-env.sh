# shellcheck shell=bash
# Sourced by the other scripts in tests/container/ (and usable by hand:
# `. tests/container/podman-env.sh; podman images`).
#
# Podman gets its whole configuration from files written here, never from the
# machine's /etc/containers or /var/lib/containers: the CI machines have no
# systemd (so cgroupfs + file events logger), runc instead of crun, a low
# hard ulimit that podman's defaults exceed, and no registry we may reach
# (short names resolve to docker.io only so that a locally tagged
# docker.io/library/python:... satisfies an unqualified FROM python:...;
# every build/run here passes --pull=never so nothing is ever fetched).
#
# TALLY_PODMAN_CACHE (optional) moves everything; point it at an empty
# directory to measure a cold run.

if [[ $EUID -ne 0 ]]; then
    echo "tests/container: must run as root (debootstrap and rootful podman)" >&2
    return 1
fi

TALLY_PODMAN_CACHE=${TALLY_PODMAN_CACHE:-/var/cache/tally-podman}
# The run root holds lock files and container state that must not survive a
# reboot, so it lives on /run (tmpfs), keyed by the cache path so two caches
# never share state.
TALLY_PODMAN_RUN=${TALLY_PODMAN_RUN:-/run/tally-podman/$(printf '%s' "$TALLY_PODMAN_CACHE" | sha256sum | cut -c1-12)}
export TALLY_PODMAN_CACHE TALLY_PODMAN_RUN

tally_podman_write_conf() {
    local driver=$1
    mkdir -p "$TALLY_PODMAN_CACHE" "$TALLY_PODMAN_RUN"
    cat >"$TALLY_PODMAN_CACHE/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
# A run that names no network must not get netavark's bridge: that adds
# iptables chains to the host that outlive every container.
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$TALLY_PODMAN_RUN/events.log"
tmp_dir = "$TALLY_PODMAN_RUN/libpod"
CONF
    # Each driver gets its own graph root: switching driver on an existing
    # store is refused by containers/storage.
    cat >"$TALLY_PODMAN_CACHE/storage.conf" <<CONF
[storage]
driver = "$driver"
graphroot = "$TALLY_PODMAN_CACHE/storage-$driver"
runroot = "$TALLY_PODMAN_RUN/storage"
CONF
    cat >"$TALLY_PODMAN_CACHE/registries.conf" <<CONF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
CONF
    export CONTAINERS_CONF="$TALLY_PODMAN_CACHE/containers.conf"
    export CONTAINERS_STORAGE_CONF="$TALLY_PODMAN_CACHE/storage.conf"
    export CONTAINERS_REGISTRIES_CONF="$TALLY_PODMAN_CACHE/registries.conf"
}

tally_podman_setup() {
    command -v podman >/dev/null || { echo "podman not installed (apt-get install podman runc)" >&2; return 1; }
    command -v runc >/dev/null || { echo "runc not installed (apt-get install runc)" >&2; return 1; }
    # Overlay is much faster than vfs, but is refused on some file systems
    # (e.g. when the cache itself sits on overlayfs); then fall back.
    local driver=${TALLY_PODMAN_DRIVER:-}
    if [[ -z $driver ]]; then
        if [[ -f $TALLY_PODMAN_CACHE/driver ]]; then
            driver=$(<"$TALLY_PODMAN_CACHE/driver")
        else
            tally_podman_write_conf overlay
            if podman info --format '{{.Store.GraphDriverName}}' >/dev/null 2>&1 \
                && tally_overlay_mount_works; then
                driver=overlay
            else
                driver=vfs
            fi
            printf '%s\n' "$driver" >"$TALLY_PODMAN_CACHE/driver"
        fi
    fi
    tally_podman_write_conf "$driver"
}

# `podman info` succeeds even where overlay mounts later fail, so mount one.
tally_overlay_mount_works() {
    local d
    d=$(mktemp -d "$TALLY_PODMAN_CACHE/overlay-probe.XXXXXX") || return 1
    mkdir -p "$d"/{lower,upper,work,merged}
    local ok=1
    if mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/merged" 2>/dev/null; then
        ok=0
        umount "$d/merged"
    fi
    rm -rf "$d"
    return "$ok"
}

tally_podman_setup || return 1
