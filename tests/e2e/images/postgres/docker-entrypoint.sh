#!/usr/bin/env bash
# The part of the official postgres image's entrypoint the stack relies on: POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD(_FILE), PGDATA, initdb on an empty data directory with scram-sha-256 for TCP clients,
# then exec postgres (PID 1). Running as root drops to the postgres user, like the official one.
set -Eeuo pipefail

if [[ ${1:0:1} == - ]]; then set -- postgres "$@"; fi

if [[ $1 == postgres && $(id -u) == 0 ]]; then
    mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [[ $1 == postgres ]]; then
    if [[ -n ${POSTGRES_PASSWORD_FILE:-} ]]; then
        [[ -z ${POSTGRES_PASSWORD:-} ]] || { echo "both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set" >&2; exit 1; }
        POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE")
    fi
    POSTGRES_USER=${POSTGRES_USER:-postgres}
    POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" 2>/dev/null || :
    if [[ ! -s $PGDATA/PG_VERSION ]]; then
        [[ -n ${POSTGRES_PASSWORD:-} ]] || { echo "Database is uninitialized and superuser password is not specified." >&2; exit 1; }
        # shellcheck disable=SC2086 # word splitting wanted, as in the official entrypoint
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") ${POSTGRES_INITDB_ARGS:-}
        printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
        pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
        if [[ $POSTGRES_DB != postgres ]]; then
            PGPASSWORD='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --dbname postgres \
                --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        fi
        pg_ctl -D "$PGDATA" -m fast -w stop
        echo "PostgreSQL init process complete; ready for start up."
    fi
fi
unset POSTGRES_PASSWORD
exec "$@"
