#!/usr/bin/env bash
# bench.sh — measure dump, verify and restore time for N visitors (default 1,000,000) with the real
# commands. Needs a PostgreSQL 15 reachable through the usual PG* variables (a superuser: it creates
# and drops the database tally_bench) and the repository's .venv (make venv). Not part of the test suite;
# numbers go to docs/backup-restore.md.
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres backup/bench.sh [visitors]
set -Eeuo pipefail
N=${1:-1000000}
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
export PGDATABASE=tally_bench BACKUP_PREFIX=tally_bench
BACKUP_DIR=$(mktemp -d /tmp/tally-bench.XXXXXX)
export BACKUP_DIR
trap 'rm -rf "$BACKUP_DIR"; psql -X -q -d postgres -c "DROP DATABASE IF EXISTS tally_bench WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS tally_bench WITH (FORCE)" -c "CREATE DATABASE tally_bench"
# The schema from the app's migrations and the visitors from its seeder (app/seed.py), as the tests do.
export TALLY_ENV=development DATABASE_URL="postgresql://${PGUSER:-postgres}@${PGHOST:-127.0.0.1}:${PGPORT:-5432}/tally_bench"
REPO=$(dirname "$HERE")
(cd "$REPO" && .venv/bin/flask --app app db upgrade >/dev/null)
start=$EPOCHREALTIME
(cd "$REPO" && .venv/bin/python -m app.seed "$N")
psql -X -q -d tally_bench -c "VACUUM ANALYZE"
seed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
size=$(psql -X -At -d postgres -c "SELECT pg_size_pretty(pg_database_size('tally_bench'))")

timed() { local s=$EPOCHREALTIME; "$@" >/dev/null; awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
t_backup=$(timed "$HERE/bin/backup")
dump=$(du -h "$BACKUP_DIR"/tally_bench-*.dump | cut -f1)
t_verify=$(timed "$HERE/bin/verify" latest)
s=$EPOCHREALTIME
restore_out=$("$HERE/bin/restore" latest --yes --drop-old)
t_restore=$(awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
swap=$(grep -o 'swap=[0-9.]*s' <<<"$restore_out")
echo "visitors=$N database=$size seed=${seed}s dump_file=$dump backup=${t_backup}s verify=${t_verify}s restore=${t_restore}s ($swap) cores=$(nproc) server=$(psql -X -At -d postgres -c 'SHOW server_version')"
