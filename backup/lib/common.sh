# shellcheck shell=bash
# Shared by the backup sidecar commands (sourced, never executed). Every command works the same
# natively (tests, operators on a host) and in the container: all paths and connection settings
# come from the environment, with the container's values as defaults.

: "${BACKUP_DIR:=/backups}"
: "${PGDATABASE:=tally}"
: "${PGUSER:=tally}"
: "${BACKUP_PREFIX:=$PGDATABASE}"
: "${BACKUP_MAINTENANCE_DB:=postgres}"
: "${BACKUP_LOCK_WAIT:=600}"
: "${BACKUP_RESTORE_JOBS:=2}"
: "${BACKUP_LOCK_TIMEOUT:=60s}"
# Overridable so a test can slip a wrapper in front of one binary without shadowing the others.
: "${PG_DUMP:=pg_dump}"
: "${PG_RESTORE:=pg_restore}"
# The role that owns the app's schema (app/roles.py OWNER); restores are made as it when it exists.
: "${BACKUP_SCHEMA_OWNER:=tally_owner}"
export PGDATABASE PGUSER

# node_exporter's textfile directory (compose: a volume of its own, read-only in node-exporter).
METRICS_DIR=${BACKUP_METRICS_DIR:-$BACKUP_DIR/metrics}
TMP_DIR="$BACKUP_DIR/.tmp"
LOCK_FILE="$BACKUP_DIR/.lock"
NAME_RE="^${BACKUP_PREFIX}-[0-9]{8}T[0-9]{6}Z$"
# Exit status when another backup/verify/restore holds the lock (EX_TEMPFAIL).
EXIT_LOCKED=75

CMD_NAME=${CMD_NAME:-$(basename "$0")}

log() { printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$CMD_NAME" "$*" >&2; }

# The one line an operator (or a log alert) reads: always on stdout, always starts with the command.
summary() { printf '%s: %s\n' "$CMD_NAME" "$*"; }

die() {
  local status=$1
  shift
  log "ERROR: $*"
  summary "FAILED $*"
  exit "$status"
}

# "now" is injectable so retention and naming can be tested against a simulated calendar.
now_epoch() {
  if [[ -n ${BACKUP_NOW:-} ]]; then
    date -u -d "$BACKUP_NOW" +%s || die 2 "cannot parse BACKUP_NOW=$BACKUP_NOW"
  else
    date -u +%s
  fi
}

# Durations use the real clock even when BACKUP_NOW is fixed.
clock() { printf '%s' "${EPOCHREALTIME/,/.}"; }
elapsed_since() { awk -v a="$1" -v b="$(clock)" 'BEGIN { printf "%.3f", b - a }'; }

load_password() {
  if [[ -n ${PGPASSWORD_FILE:-} ]]; then
    [[ -r $PGPASSWORD_FILE ]] || die 2 "cannot read PGPASSWORD_FILE=$PGPASSWORD_FILE"
    PGPASSWORD=$(<"$PGPASSWORD_FILE")
    export PGPASSWORD
  fi
}

ensure_dirs() {
  mkdir -p "$BACKUP_DIR" "$METRICS_DIR" "$TMP_DIR" ||
    die 2 "cannot create directories under BACKUP_DIR=$BACKUP_DIR"
  [[ -w $BACKUP_DIR ]] || die 2 "BACKUP_DIR=$BACKUP_DIR is not writable by uid $(id -u)"
}

# Take the lock shared by backup, verify and restore. $1 = seconds to wait (0 = fail at once).
take_lock() {
  local wait=$1
  exec {LOCK_FD}>>"$LOCK_FILE" || die 2 "cannot open lock file $LOCK_FILE"
  if ! flock -w "$wait" "$LOCK_FD"; then
    die "$EXIT_LOCKED" "another backup, verify or restore is running (lock $LOCK_FILE held)"
  fi
}

psql_q() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
psql_admin() { psql_q -d "$BACKUP_MAINTENANCE_DB" "$@"; }

valid_name() { [[ $1 =~ $NAME_RE ]]; }

# Resolve "latest" or a name (with or without .dump) into RESOLVED; dies when absent. Not meant
# for $(...): die's summary line must reach the operator, not a variable.
resolve_name() {
  local arg=$1 target
  if [[ $arg == latest ]]; then
    target=$(readlink "$BACKUP_DIR/latest" 2>/dev/null) || die 1 "no latest backup in $BACKUP_DIR"
    arg=$target
  fi
  arg=${arg##*/}
  arg=${arg%.dump}
  valid_name "$arg" || die 2 "not a backup name: $1 (expected ${BACKUP_PREFIX}-YYYYMMDDTHHMMSSZ or latest)"
  [[ -f $BACKUP_DIR/$arg.dump ]] || die 1 "backup $arg not found in $BACKUP_DIR"
  # shellcheck disable=SC2034 # read by the sourcing command
  RESOLVED=$arg
}

# Backup names carry their UTC creation time: prefix-YYYYMMDDTHHMMSSZ.
name_epoch() {
  local ts=${1##*-}
  date -u -d "${ts:0:4}-${ts:4:2}-${ts:6:2} ${ts:9:2}:${ts:11:2}:${ts:13:2}" +%s
}

manifest_get() {
  local file=$1 key=$2
  sed -n "s/^${key}=//p" "$file" | head -n 1
}

# Statistics that must survive a dump/restore round trip unchanged. The digest sums a hash of every
# visitor row (all columns), so a restore that loses or alters a single visitor is caught, at
# O(rows) cost and without building a huge string. Session settings pin the row text form of dates and bytes.
# Prints one line: revision|visitors|visits|shard_visitors|shard_visits|daily_visits|digest
STATS_SETTINGS="SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET bytea_output = 'hex'; SET IntervalStyle = 'postgres';"
PRESENCE_SQL="SELECT concat_ws('|', to_regclass('public.alembic_version') IS NOT NULL, to_regclass('public.visitors') IS NOT NULL, to_regclass('public.total_shards') IS NOT NULL, to_regclass('public.daily_shards') IS NOT NULL);"

stats_sql() {
  local presence=$1 a v t d
  IFS='|' read -r a v t d <<<"$presence"
  local rev="'none'" vis="''" visits="''" sv="''" sviz="''" dv="''" dig="''"
  [[ $a == t ]] && rev="coalesce((SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version), 'none')"
  if [[ $v == t ]]; then
    vis="(SELECT count(*) FROM visitors)"
    visits="(SELECT coalesce(sum(visits), 0) FROM visitors)"
    # hashtextextended is the hash behind hash partitioning, so PostgreSQL keeps it stable across
    # versions; 2.5x faster than md5 here (1 M rows: 1.7 s vs 4.3 s).
    dig="(SELECT coalesce(sum(hashtextextended(v::text, 0)), 0) FROM visitors v)"
  fi
  if [[ $t == t ]]; then
    sv="(SELECT coalesce(sum(visitors), 0) FROM total_shards)"
    sviz="(SELECT coalesce(sum(visits), 0) FROM total_shards)"
  fi
  [[ $d == t ]] && dv="(SELECT coalesce(sum(visits), 0) FROM daily_shards)"
  printf "SELECT concat_ws('|', %s, %s, %s, %s, %s, %s, %s);" "$rev" "$vis" "$visits" "$sv" "$sviz" "$dv" "$dig"
}

# Stats of a database in one shot (its own snapshot). $1 = database name.
db_stats() {
  local db=$1 presence
  presence=$(psql_q -d "$db" -c "$PRESENCE_SQL") || return 1
  psql_q -d "$db" -c "$STATS_SETTINGS" -c "$(stats_sql "$presence")"
}

STATS_KEYS=(alembic_revision visitors visits shard_visitors shard_visits daily_visits visitors_digest)

# Compare a stats line with a manifest; prints one reason per mismatch, returns 1 if any.
check_stats() {
  local stats=$1 manifest=$2 expect_rev=${3:-} i rc=0
  local -a got
  IFS='|' read -r -a got <<<"$stats"
  for i in "${!STATS_KEYS[@]}"; do
    local key=${STATS_KEYS[$i]} want
    want=$(manifest_get "$manifest" "$key")
    if [[ $key == alembic_revision && -n $expect_rev ]]; then
      want=$expect_rev
    fi
    if [[ ${got[$i]:-} != "$want" ]]; then
      echo "$key: expected '${want}' got '${got[$i]:-}'"
      rc=1
    fi
  done
  # Counter invariants from the schema contract: the sharded totals equal the visitor table.
  if [[ -n ${got[1]:-} && -n ${got[3]:-} && ${got[1]} != "${got[3]}" ]]; then
    echo "invariant: count(visitors)=${got[1]} != sum(total_shards.visitors)=${got[3]}"
    rc=1
  fi
  if [[ -n ${got[2]:-} && -n ${got[4]:-} && ${got[2]} != "${got[4]}" ]]; then
    echo "invariant: sum(visitors.visits)=${got[2]} != sum(total_shards.visits)=${got[4]}"
    rc=1
  fi
  return "$rc"
}

human_size() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1" 2>/dev/null || printf '%sB' "$1"; }

human_age() {
  local s=$1
  if ((s < 0)); then printf 'future'
  elif ((s < 3600)); then printf '%dm' $((s / 60))
  elif ((s < 86400)); then printf '%dh%02dm' $((s / 3600)) $((s % 3600 / 60))
  else printf '%dd%02dh' $((s / 86400)) $((s % 86400 / 3600))
  fi
}

# --- metrics: a state file of key=value pairs rendered to a node_exporter textfile -------------

METRICS_STATE="$METRICS_DIR/state"
METRICS_PROM="$METRICS_DIR/tally_backup.prom"

# metrics_set key=value ...; serialised by its own lock because verify may run beside backup.
metrics_set() {
  mkdir -p "$METRICS_DIR" || return 1
  (
    flock -w 30 9 || exit 1
    declare -A state=()
    local line k
    if [[ -f $METRICS_STATE ]]; then
      while IFS= read -r line; do
        [[ $line == *=* ]] && state[${line%%=*}]=${line#*=}
      done <"$METRICS_STATE"
    fi
    for k in "$@"; do state[${k%%=*}]=${k#*=}; done
    local tmp="$METRICS_STATE.tmp.$$"
    for k in "${!state[@]}"; do printf '%s=%s\n' "$k" "${state[$k]}"; done | sort >"$tmp"
    mv -f "$tmp" "$METRICS_STATE"
    metrics_render
  ) 9>>"$METRICS_DIR/.lock"
}

metrics_render() {
  declare -A state=()
  local line
  if [[ -f $METRICS_STATE ]]; then
    while IFS= read -r line; do
      [[ $line == *=* ]] && state[${line%%=*}]=${line#*=}
    done <"$METRICS_STATE"
  fi
  local files=0 bytes=0 f
  for f in "$BACKUP_DIR/$BACKUP_PREFIX"-*.dump; do
    [[ -f $f ]] || continue
    valid_name "$(basename "$f" .dump)" || continue
    files=$((files + 1))
    bytes=$((bytes + $(stat -c %s "$f")))
  done
  local tmp="$METRICS_PROM.tmp.$$"
  {
    metric last_success_timestamp_seconds "Unix time of the last successful backup (0 = never)." "${state[last_success_timestamp_seconds]:-0}"
    metric last_duration_seconds "Wall time of the last successful backup." "${state[last_duration_seconds]:-}"
    metric last_size_bytes "Size of the last successful dump." "${state[last_size_bytes]:-}"
    metric previous_size_bytes "Size of the successful dump before the last one." "${state[previous_size_bytes]:-}"
    metric last_visitors "Visitor rows in the last successful dump." "${state[last_visitors]:-}"
    metric last_visits "Total visits in the last successful dump." "${state[last_visits]:-}"
    metric last_run_success "1 if the last backup run succeeded, 0 if it failed." "${state[last_run_success]:-}"
    metric last_run_timestamp_seconds "Unix time the last backup run ended." "${state[last_run_timestamp_seconds]:-}"
    metric last_verify_success "1 if the last verification of the latest backup passed, 0 if it failed." "${state[last_verify_success]:-}"
    metric last_verify_timestamp_seconds "Unix time of the last verification of the latest backup (0 = never)." "${state[last_verify_timestamp_seconds]:-0}"
    metric last_verify_duration_seconds "Wall time of the last verification." "${state[last_verify_duration_seconds]:-}"
    metric offsite_enabled "1 if an offsite bucket is configured." "${state[offsite_enabled]:-}"
    metric offsite_last_run_success "1 if the last offsite upload succeeded." "${state[offsite_last_run_success]:-}"
    metric offsite_last_success_timestamp_seconds "Unix time of the last successful offsite upload." "${state[offsite_last_success_timestamp_seconds]:-}"
    metric schedule_interval_seconds "Nominal seconds between scheduled backups (0 = no schedule)." "${state[schedule_interval_seconds]:-}"
    metric files "Backups retained in the backup directory." "$files"
    metric files_bytes "Bytes used by retained dumps." "$bytes"
    metric pitr_enabled "1 if continuous WAL archiving and base backups are on." "${state[pitr_enabled]:-}"
    metric base_last_success_timestamp_seconds "Unix time the last successful base backup finished (0 = never)." "${state[base_last_success_timestamp_seconds]:-$([[ ${state[pitr_enabled]:-0} == 1 ]] && echo 0)}"
    metric base_last_duration_seconds "Wall time of the last successful base backup." "${state[base_last_duration_seconds]:-}"
    metric base_last_size_bytes "Size of the last successful base backup." "${state[base_last_size_bytes]:-}"
    metric base_last_run_success "1 if the last base backup run succeeded, 0 if it failed." "${state[base_last_run_success]:-}"
    metric base_bytes "Bytes used by retained base backups." "${state[base_bytes]:-}"
    metric wal_streaming "1 if pg_receivewal is streaming through its replication slot." "${state[wal_streaming]:-}"
    metric wal_lag_bytes "WAL the server has written that the archive has not flushed yet." "${state[wal_lag_bytes]:-}"
    metric wal_check_timestamp_seconds "Unix time the WAL archiving state was last checked." "${state[wal_check_timestamp_seconds]:-}"
    metric wal_last_streaming_timestamp_seconds "Unix time the archive was last seen streaming and caught up to within one segment." "${state[wal_last_streaming_timestamp_seconds]:-}"
    metric wal_archive_files "WAL segments and history files in the archive." "${state[wal_archive_files]:-}"
    metric wal_archive_bytes "Bytes used by the WAL archive." "${state[wal_archive_bytes]:-}"
    metric wal_offsite_last_success_timestamp_seconds "Unix time the last WAL segment was copied offsite." "${state[wal_offsite_last_success_timestamp_seconds]:-}"
  } >"$tmp"
  mv -f "$tmp" "$METRICS_PROM"
}

metric() {
  [[ -n $3 ]] || return 0
  printf '# HELP tally_backup_%s %s\n# TYPE tally_backup_%s gauge\ntally_backup_%s %s\n' "$1" "$2" "$1" "$1" "$3"
}

metrics_get() {
  [[ -f $METRICS_STATE ]] || return 0
  sed -n "s/^$1=//p" "$METRICS_STATE" | head -n 1
}

# --- restore into a fresh database and check it against the manifest --------------------------

# Checks a dump's files before anything reads it: present, checksum, manifest matches, TOC readable.
check_dump_files() {
  local name=$1 dir=$BACKUP_DIR
  [[ -f $dir/$name.dump.sha256 ]] || { echo "checksum file $name.dump.sha256 missing"; return 1; }
  [[ -f $dir/$name.manifest ]] || { echo "manifest $name.manifest missing"; return 1; }
  (cd "$dir" && sha256sum --check --status --strict "$name.dump.sha256") ||
    { echo "checksum mismatch: $name.dump is corrupted or truncated"; return 1; }
  local sum
  sum=$(cut -d ' ' -f 1 "$dir/$name.dump.sha256")
  [[ $sum == "$(manifest_get "$dir/$name.manifest" dump_sha256)" ]] ||
    { echo "manifest does not describe $name.dump (sha256 differs)"; return 1; }
  "$PG_RESTORE" --list "$dir/$name.dump" >/dev/null 2>&1 ||
    { echo "pg_restore cannot read the archive of $name.dump"; return 1; }
}

db_exists() {
  [[ $(psql_admin -v d="$1" <<<"SELECT count(*) FROM pg_database WHERE datname = :'d';") == 1 ]]
}

drop_db() {
  psql_admin -v d="$1" <<<'DROP DATABASE IF EXISTS :"d" WITH (FORCE);' >/dev/null
}

# Restores $1 into the new database $2 and compares it with the manifest. On failure prints the
# reasons on stdout and returns 1; the caller drops the database.
restore_and_check() {
  local name=$1 db=$2 expect_rev=${3:-} out
  psql_admin -v d="$db" <<<'CREATE DATABASE :"d";' >/dev/null || { echo "cannot create database $db"; return 1; }
  # A fresh database needs no --clean and allows parallel jobs; --no-owner lets a dump restore on a host
  # whose roles differ. Where the schema owner role exists (app/roles.py) and we may act as it, the
  # database and every object are restored as that owner with the dump's grants, so the app can count in
  # the swapped-in database at once; elsewhere objects belong to the restoring role, without grants.
  local as_owner=(--no-privileges)
  if [[ $(psql_admin -v r="$BACKUP_SCHEMA_OWNER" \
      <<<"SELECT count(*) FROM pg_roles WHERE rolname = :'r' AND pg_has_role(current_user, oid, 'MEMBER');") == 1 ]]; then
    psql_admin -v d="$db" -v r="$BACKUP_SCHEMA_OWNER" <<<'ALTER DATABASE :"d" OWNER TO :"r";' >/dev/null ||
      { echo "cannot give database $db to $BACKUP_SCHEMA_OWNER"; return 1; }
    as_owner=(--role="$BACKUP_SCHEMA_OWNER")
  fi
  if ! out=$("$PG_RESTORE" --exit-on-error --no-owner "${as_owner[@]}" --jobs="$BACKUP_RESTORE_JOBS" \
    -d "$db" "$BACKUP_DIR/$name.dump" 2>&1); then
    echo "pg_restore failed: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    return 1
  fi
  local stats
  stats=$(db_stats "$db") || { echo "cannot read the restored database $db"; return 1; }
  # shellcheck disable=SC2034 # for the caller (a redirected call runs in this shell)
  RESTORED_STATS=$stats
  check_stats "$stats" "$BACKUP_DIR/$name.manifest" "$expect_rev"
}
