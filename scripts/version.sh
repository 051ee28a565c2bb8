#!/bin/sh
# Print Tally's full version: the semver from version.txt plus the build number.
#
#   scripts/version.sh            -> 1.3.0+build.57   (semver build metadata; what /version shows)
#   scripts/version.sh --oci      -> 1.3.0-build.57   (image tag: OCI tags may not contain '+')
#   scripts/version.sh --semver   -> 1.3.0
#   scripts/version.sh [--oci] 58 -> explicit build number
#
# The build number is, in order: the argument, $BUILD_NUMBER, $CI_PIPELINE_IID (GitLab's per-project
# pipeline counter, so it only ever grows), else 0 for a local build.
# POSIX sh on purpose: the build job runs in the docker:cli image, which has no bash.
set -eu

usage() {
    echo "usage: $0 [--oci|--semver] [build-number]" >&2
    exit 2
}

mode=semver-build
case "${1:-}" in
    --oci) mode=oci; shift ;;
    --semver) mode=semver; shift ;;
    -h|--help) usage ;;
    -*) usage ;;
esac
[ "$#" -le 1 ] || usage

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
version_file=${VERSION_FILE:-$here/../version.txt}
[ -r "$version_file" ] || { echo "version.sh: cannot read $version_file" >&2; exit 1; }

# First line only, surrounding whitespace dropped: editors add trailing newlines.
version=$(sed -n '1{s/^[[:space:]]*//;s/[[:space:]]*$//;p;}' "$version_file")

# Strict semver core with optional pre-release; build metadata is ours to append, so it is rejected here.
if ! printf '%s\n' "$version" | grep -Eq '^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?$'; then
    echo "version.sh: '$version' in $version_file is not MAJOR.MINOR.PATCH[-PRERELEASE] (no '+build')" >&2
    exit 1
fi

build=${1:-${BUILD_NUMBER:-${CI_PIPELINE_IID:-0}}}
case "$build" in
    ''|*[!0-9]*) echo "version.sh: build number '$build' is not a non-negative integer" >&2; exit 1 ;;
esac

case "$mode" in
    semver) printf '%s\n' "$version" ;;
    oci) printf '%s-build.%s\n' "$version" "$build" ;;
    *) printf '%s+build.%s\n' "$version" "$build" ;;
esac
