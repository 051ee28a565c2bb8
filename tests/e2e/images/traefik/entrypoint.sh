#!/bin/sh
# As the official image's entrypoint.sh: flags or a traefik subcommand as arguments run traefik.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- traefik "$@"
elif traefik "$1" --help >/dev/null 2>&1; then
    set -- traefik "$@"
fi
exec "$@"
