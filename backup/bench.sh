#!/usr/bin/env bash
# bench.sh — measure dump, verify and restore time for N visitors (default 1,000,000) with the real
# commands. Needs a PostgreSQL 15 reachable through the usual PG* variables (a superuser: it creates
# and drops the database tally_bench). Not part of the test suite; numbers go to docs/backup-restore.md.
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres backup/bench.sh [visitors]
set -Eeuo pipefail
N=${1:-1000000}
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
export PGDATABASE=tally_bench BACKUP_PREFIX=tally_bench
BACKUP_DIR=$(mktemp -d /tmp/tally-bench.XXXXXX)
export BACKUP_DIR
trap 'rm -rf "$BACKUP_DIR"; psql -X -q -d postgres -c "DROP DATABASE IF EXISTS tally_bench WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS tally_bench WITH (FORCE)" -c "CREATE DATABASE tally_bench"
start=$EPOCHREALTIME
psql -X -q -v ON_ERROR_STOP=1 -d tally_bench <<SQL
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('bench');
CREATE TABLE visitors (visitor_key bytea PRIMARY KEY, visits bigint NOT NULL, first_seen timestamptz NOT NULL,
  last_seen timestamptz NOT NULL, last_day date NOT NULL, prev_day date);
CREATE TABLE total_shards (shard smallint PRIMARY KEY, visits bigint NOT NULL DEFAULT 0, visitors bigint NOT NULL DEFAULT 0);
CREATE TABLE daily_shards (day date, shard smallint, visits bigint NOT NULL DEFAULT 0,
  unique_visitors bigint NOT NULL DEFAULT 0, new_visitors bigint NOT NULL DEFAULT 0, PRIMARY KEY (day, shard));
INSERT INTO visitors SELECT sha256(('v' || i)::bytea), 1 + i % 13, now() - interval '30 days', now(),
  current_date - i % 30, current_date - 1 - i % 30 FROM generate_series(1, $N) AS i;
INSERT INTO total_shards SELECT get_byte(visitor_key, 0) % 16, sum(visits), count(*) FROM visitors GROUP BY 1;
INSERT INTO daily_shards SELECT last_day, get_byte(visitor_key, 0) % 16, sum(visits), count(*), 0 FROM visitors GROUP BY 1, 2;
VACUUM ANALYZE;
SQL
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
