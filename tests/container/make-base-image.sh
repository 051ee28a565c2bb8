#!/usr/bin/env bash
# Makes a local stand-in for the base image(s) the Dockerfile's FROM lines name.
#
# No image registry is reachable from CI, so the official python image cannot
# be pulled. Instead: debootstrap a Debian minbase of the same suite, add the
# distribution's Python (same minor as the pinned tag, checked below), lay it
# out like the official image (/usr/local/bin/python, python3, pip; PATH,
# LANG, CMD python3) and tag it with exactly the reference the Dockerfile
# uses, so `podman build --pull=never` resolves FROM unchanged.
#
# Known gap (docs/container-testing.md): Debian bookworm ships Python 3.11.2
# in /usr (with Debian's dist-packages patches) where the official image has
# 3.11.x compiled into /usr/local; only the minor version is guaranteed equal.
#
# Usage: make-base-image.sh [DOCKERFILE]     (default: Dockerfile at repo root)
# Env:   TALLY_PODMAN_CACHE  cache/storage dir (default /var/cache/tally-podman)
#        TALLY_DEBIAN_MIRROR override the mirror read from /etc/apt/sources*
# Prints the tagged references on stdout, progress on stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dockerfile=${1:-$repo/Dockerfile}
self="$here/make-base-image.sh"

# shellcheck source=tests/container/podman-env.sh
. "$here/podman-env.sh"

log() { printf 'make-base-image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -f $dockerfile ]] || die "no Dockerfile at $dockerfile"
command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install debootstrap)"

# Prints one normalised external base reference per line. Global ARG defaults
# are expanded; FROM lines naming an earlier stage or scratch are skipped.
from_refs() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r"\\\n", " ", text)          # line continuations
args, stages, refs, seen_from = {}, set(), [], False
def expand(s):
    def sub(m):
        val = args.get(m.group(1) or m.group(3))
        return val if val else (m.group(2) or "")
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)", sub, s)
for line in text.splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "ARG" and not seen_from:
        for part in rest.split():
            name, eq, val = part.partition("=")
            args[name] = val.strip("\"'") if eq else args.get(name)
    elif word == "FROM":
        seen_from = True
        toks = [t for t in rest.split() if not t.startswith("--")]
        image = expand(toks[0])
        if len(toks) >= 3 and toks[1].upper() == "AS":
            stage = toks[2].lower()
        else:
            stage = None
        if image.lower() not in stages and image != "scratch":
            if "@" in image:
                sys.exit(f"FROM {image}: a digest cannot be reproduced by a locally made image; "
                         "pin the plain tag (see docs/container-testing.md)")
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
            parts = name.split("/")
            if len(parts) == 1:
                name = "docker.io/library/" + name
            elif "." not in parts[0] and ":" not in parts[0] and parts[0] != "localhost":
                name = "docker.io/" + name
            ref = f"{name}:{tag}"
            if ref not in refs:
                refs.append(ref)
        if stage:
            stages.add(stage)
print("\n".join(refs))
PY
}

refs=$(from_refs "$dockerfile") || die "cannot parse FROM lines of $dockerfile"
[[ -n $refs ]] || die "no external FROM image in $dockerfile"

suite=
python_minor=
while read -r ref; do
    repo_name=${ref%:*}
    tag=${ref##*:}
    case $repo_name in
        docker.io/library/python) ;;
        *) die "$ref: only the official python image can be stood in for" ;;
    esac
    case $tag in
        *bookworm*) s=bookworm ;;
        *) die "$ref: tag must name the Debian suite (e.g. -slim-bookworm); an unsuffixed tag follows Debian's newest release and would silently change the base" ;;
    esac
    m=$(sed -nE 's/^([0-9]+\.[0-9]+).*/\1/p' <<<"$tag")
    [[ -n $m ]] || die "$ref: tag has no Python version"
    [[ -z $suite || $suite == "$s" ]] || die "FROM lines name different Debian suites"
    [[ -z $python_minor || $python_minor == "$m" ]] || die "FROM lines name different Python versions"
    suite=$s
    python_minor=$m
done <<<"$refs"

# Debian suite -> the python3 minor it ships; the stand-in is only honest
# when this equals the tag's minor.
case $suite in
    bookworm) debian_minor=3.11 ;;
esac
[[ $debian_minor == "$python_minor" ]] \
    || die "Dockerfile pins Python $python_minor but Debian $suite ships $debian_minor: the stand-in would test another Python"

mirror=${TALLY_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    # deb822 "URIs:" of the main archive first, then one-line "deb URL suite".
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -nE 's#^URIs:[[:space:]]+(\S+/debian)/?$#\1#p' | head -n1)
    [[ -n $mirror ]] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed -nE 's#^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?(\S+/debian)/?[[:space:]]+'"$suite"'[[:space:]].*#\2#p' | head -n1)
    [[ -n $mirror ]] || mirror=http://deb.debian.org/debian
fi

exec 9>"$TALLY_PODMAN_CACHE/.base.lock"
flock 9

script_hash=$(sha256sum "$self" | cut -c1-16)
rootfs_key=$(printf '%s\n' "$script_hash" "$suite" "$mirror" | sha256sum | cut -c1-16)
rootfs_tar="$TALLY_PODMAN_CACHE/rootfs/$suite-$rootfs_key.tar"
image_key=$(printf '%s\n' "$rootfs_key" "$refs" | sha256sum | cut -c1-16)

have_image() {
    local got
    got=$(podman image inspect --format '{{index .Labels "org.tally.base-key"}}' "$1" 2>/dev/null) || return 1
    [[ $got == "$image_key" ]]
}

all_present=1
while read -r ref; do have_image "$ref" || all_present=0; done <<<"$refs"
if [[ $all_present == 1 ]]; then
    log "cached: $(tr '\n' ' ' <<<"$refs")"
    printf '%s\n' "$refs"
    exit 0
fi

if [[ ! -f $rootfs_tar ]]; then
    mkdir -p "$TALLY_PODMAN_CACHE/rootfs"
    # Older rootfs builds of this script are dead weight.
    find "$TALLY_PODMAN_CACHE/rootfs" -maxdepth 1 -name "$suite-*.tar" -delete
    work=$(mktemp -d "$TALLY_PODMAN_CACHE/rootfs/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    root=$work/root
    log "debootstrap $suite from $mirror (about a minute)"
    # ca-certificates, netbase, tzdata: what the official slim image adds to
    # debian:*-slim besides Python. python3-venv/pip: Debian splits them off.
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
        "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

    # The official image's pip installs anywhere; Debian's refuses outside a
    # venv (PEP 668). A Dockerfile relying on that must behave the same here.
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    ver=$(chroot "$root" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    for name in python python3 "python$python_minor"; do
        ln -sf "/usr/bin/python$python_minor" "$root/usr/local/bin/$name"
    done
    for name in pip pip3 "pip$python_minor"; do
        ln -sf /usr/bin/pip3 "$root/usr/local/bin/$name"
    done

    security=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -nE 's#^URIs:[[:space:]]+(\S+/debian-security)/?$#\1#p' | head -n1)
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${security:-http://deb.debian.org/debian-security}
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    # Slim like debian:*-slim: no package lists, caches, docs or host files.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    : >"$root/etc/resolv.conf"
    : >"$root/etc/hostname"
    printf '%s\n' "$ver" >"$work/python-version"

    tar --numeric-owner --xattrs -C "$root" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$rootfs_tar.partial" .
    mv "$work/python-version" "$rootfs_tar.python-version"
    mv "$rootfs_tar.partial" "$rootfs_tar"
    rm -rf "$work"
    trap - EXIT
fi

ver=$(<"$rootfs_tar.python-version")
first=$(head -n1 <<<"$refs")
log "importing rootfs as $first (Debian $suite, Python $ver)"
podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$ver" \
    --change 'CMD ["python3"]' \
    --change "LABEL org.tally.base-key=$image_key" \
    --change "LABEL org.tally.stand-in=debootstrap $suite minbase + Debian python3 $ver" \
    --quiet --message "tally stand-in for $first" \
    "$rootfs_tar" "$first" >/dev/null
while read -r ref; do
    [[ $ref == "$first" ]] || podman tag "$first" "$ref"
done <<<"$refs"
printf '%s\n' "$refs"
