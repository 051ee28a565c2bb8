#!/usr/bin/env bash
# Generates the secret files the compose stack reads (secrets/<name>, mounted at /run/secrets/<name>).
#
#   ./scripts/init-secrets.sh          create whatever is missing; never overwrites an existing file
#
# Values are random alphanumerics (no quoting or URL-escaping surprises), written without a trailing
# newline. The directory is private to you (0700); the files are 0644 because compose bind-mounts each
# file as-is and the services read them as their own non-root users (uid 10001, postgres, grafana...).
# Prints what it created, never a value. To rotate a secret, see secrets/README.md (the Postgres password
# must also be changed inside the database).
# Env: TALLY_SECRETS_DIR  target directory (default: <repo>/secrets)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${TALLY_SECRETS_DIR:-$repo/secrets}

# name:length. secret_key >= 32 is required by the app; the others are comfortably above brute force.
SECRETS=(
    postgres_password:32
    secret_key:64
    grafana_admin_password:24
)

random_alnum() {
    local length=$1 value=""
    # Each round yields ~120 alphanumerics from 96 random bytes; loop in the unlikely case of a short one.
    while ((${#value} < length)); do
        value+=$(head -c 96 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${value:0:length}"
}

mkdir -p "$dir"
chmod 0700 "$dir"

created=0
for entry in "${SECRETS[@]}"; do
    name=${entry%%:*}
    length=${entry##*:}
    path=$dir/$name
    if [[ -e $path ]]; then
        echo "kept     $path (exists; not overwritten)"
        continue
    fi
    tmp=$(mktemp "$dir/.$name.XXXXXX")
    random_alnum "$length" >"$tmp"
    chmod 0644 "$tmp"
    # -n: a file that appeared meanwhile still wins over ours.
    mv -n "$tmp" "$path"
    rm -f "$tmp"
    echo "created  $path ($length random characters)"
    created=$((created + 1))
done

echo "init-secrets: $created created in $dir"
echo "Grafana login: user 'admin', password: cat $dir/grafana_admin_password"
