#!/usr/bin/env bash
# Optional: writes the stack's secret files as secrets/<name> for operators who want to choose or keep
# their own values (and for Terraform-style provisioning). `docker compose up -d` does NOT need it: the
# secrets-init service generates whatever is missing into the `secrets` volume. When a file exists here,
# secrets-init validates it and copies it into the volume on every `up` (editing it rotates the secret).
#
#   ./scripts/init-secrets.sh          create whatever is missing; never overwrites an existing file
#
# Values are random alphanumerics (no quoting or URL-escaping surprises), written without a trailing
# newline; lengths match what secrets-init generates (scripts/secrets_init.py). secrets-init runs as uid
# 10001 and must read them. As root (as on AWS), the directory and files go to uid 10001: directory 0700,
# files 0600, nobody else on the host reads them. As another user, who cannot give files away, the
# directory is 0711 and the files 0644 (world-readable by name; a warning says so): run it with sudo.
# Prints what it created, never a value. Rotation: secrets/README.md.
# Env: TALLY_SECRETS_DIR  target directory (default: <repo>/secrets)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${TALLY_SECRETS_DIR:-$repo/secrets}

# name:length. secret_key >= 32 is required by the app; the others are comfortably above brute force.
SECRETS=(
    postgres_password:32
    secret_key:64
    grafana_admin_password:24
    db_app_password:32
    db_backup_password:32
    db_exporter_password:32
    blackbox_password:32
)

random_alnum() {
    local length=$1 value=""
    # Each round yields ~120 alphanumerics from 96 random bytes; loop in the unlikely case of a short one.
    while ((${#value} < length)); do
        value+=$(head -c 96 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${value:0:length}"
}

# The uid of the secrets-init job (the app image's user).
JOB_UID=10001

mkdir -p "$dir"
if ((EUID == 0)); then
    chown "$JOB_UID:$JOB_UID" "$dir"
    chmod 0700 "$dir"
    file_mode=0600
else
    chmod 0711 "$dir"
    file_mode=0644
    echo "WARNING: not root: secrets/* stay readable by every host user who knows their names;" \
        "run: sudo $0 (files become uid $JOB_UID, mode 0600)" >&2
fi

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
    chmod "$file_mode" "$tmp"
    if ((EUID == 0)); then chown "$JOB_UID:$JOB_UID" "$tmp"; fi
    # -n: a file that appeared meanwhile still wins over ours.
    mv -n "$tmp" "$path"
    rm -f "$tmp"
    echo "created  $path ($length random characters)"
    created=$((created + 1))
done

echo "init-secrets: $created created in $dir; docker compose up -d installs them (secrets-init)"
echo "Grafana login: user 'admin', password: cat $dir/grafana_admin_password"
