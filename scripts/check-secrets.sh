#!/bin/sh
# Gate run by the `secrets-check` one-shot service before anything that reads a secret starts:
# refuses empty, too short or placeholder values and says how to fix them. POSIX sh (runs in the app
# image, whose /bin/sh is dash).
#
#   check-secrets.sh DIR     DIR holds the secret files (in compose: /run/secrets)
set -u

dir=${1:?usage: check-secrets.sh DIR}
status=0

fail() {
    echo "secrets-check: secrets/$1: $2" >&2
    echo "  fix: delete secrets/$1 and run ./scripts/init-secrets.sh, then docker compose up -d" >&2
    status=1
}

for spec in postgres_password:16 secret_key:32 grafana_admin_password:12; do
    name=${spec%%:*}
    minimum=${spec##*:}
    file=$dir/$name
    if [ ! -r "$file" ] || [ -d "$file" ]; then
        fail "$name" "missing or unreadable"
        continue
    fi
    # $(...) drops trailing newlines, as every consumer of these files does.
    value=$(cat "$file")
    trimmed=$(printf '%s' "$value" | tr -d '[:space:]')
    if [ -z "$trimmed" ]; then
        fail "$name" "is empty"
        continue
    fi
    if [ "${#value}" -lt "$minimum" ]; then
        fail "$name" "is ${#value} characters, needs at least $minimum"
        continue
    fi
    lower=$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')
    for marker in change-me changeme change_me example placeholder; do
        case $lower in
            *"$marker"*)
                fail "$name" "holds a placeholder value (contains '$marker')"
                break
                ;;
        esac
    done
done

if [ "$status" -eq 0 ]; then
    echo "secrets-check: all secrets present, long enough and not placeholders"
fi
exit "$status"
