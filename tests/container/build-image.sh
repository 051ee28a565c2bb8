#!/usr/bin/env bash
# Builds the repository's real Dockerfile with podman, on the local stand-in
# base image made by make-base-image.sh, and prints the image ID.
#
# Usage: build-image.sh [-t TAG] [--build-arg NAME=VALUE]...
#   default tag: localhost/tally:smoke
# Env:   TALLY_PODMAN_CACHE (see podman-env.sh)
#
# --network host: the RUN steps reach PyPI exactly as the host does, and no
# bridge network (hence no iptables chain) is created for the build.
# --pull=never: nothing may come from a registry; a FROM that is not the
# stand-in fails here instead of trying the network.
# --format docker: OCI image configs have no HEALTHCHECK; podman would drop
# it (with only a warning) and the smoke test could not run it.
# The host's CA bundle is bind-mounted over the image's for the RUN steps
# only: these machines reach PyPI through a TLS-inspecting proxy whose CA
# only the host trusts (Debian's pip, and pip >= 24.2 via truststore, read
# the system bundle). The mount point exists in the base image, so nothing
# of it is left in any layer; the image keeps Debian's bundle.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

# shellcheck source=tests/container/podman-env.sh
. "$here/podman-env.sh"

tag=localhost/tally:smoke
build_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -t|--tag) tag=$2; shift 2 ;;
        --build-arg) build_args+=(--build-arg "$2"); shift 2 ;;
        *) echo "usage: $0 [-t TAG] [--build-arg NAME=VALUE]..." >&2; exit 2 ;;
    esac
done

"$here/make-base-image.sh" "$repo/Dockerfile" >/dev/null

iidfile=$(mktemp)
trap 'rm -f "$iidfile"' EXIT
ca_bundle=/etc/ssl/certs/ca-certificates.crt
ca_mount=()
[[ -f $ca_bundle ]] && ca_mount=(--volume "$ca_bundle:$ca_bundle:ro")
podman build --pull=never --network host --layers --format docker "${ca_mount[@]}" \
    --file "$repo/Dockerfile" --tag "$tag" --iidfile "$iidfile" \
    "${build_args[@]}" "$repo" >&2
# Untagged images are also the build cache of multi-stage builds (a builder
# stage's result has no child), so only those unused for a day go; a warm
# build the next day redoes at most the dependency install.
podman image prune --force --filter until=24h >/dev/null
cat "$iidfile"
echo
