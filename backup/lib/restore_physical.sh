# shellcheck shell=bash
# Point-in-time restore (sourced by `restore` after common.sh and pitr.sh): a base backup is copied
# into the stopped server's data directory $PGDATA, the archived (and the still-partial) WAL is
# replayed by a private postmaster up to the target (recovery_target_time) or to the end of the
# WAL, which then promotes, is checked (counts, counter invariants) and shut down cleanly. The
# server then starts on the restored directory as usual, on a new timeline.
: "${BACKUP_RECOVERY_TIMEOUT:=3600}"

# restore_physical BASE TARGET_TIME|latest DROP_OLD
restore_physical() {
  local base=$1 to=$2 drop_old=$3
  [[ -n ${PGDATA:-} ]] || die 2 "PGDATA is not set: a point-in-time restore needs the server's data directory (docs/backup-restore.md)"
  exec 8>>"$RECEIVER_LOCK" || die 2 "cannot open $RECEIVER_LOCK"
  flock -n 8 ||
    die "$EXIT_LOCKED" "the backup scheduler is streaming WAL into $WAL_DIR: stop the backup service first (nothing was changed)"
  if pg_isready -q -t 3 || pg_ctl status -D "$PGDATA" >/dev/null 2>&1; then
    die 2 "PostgreSQL at ${PGHOST:-local socket}:${PGPORT:-5432} is running: stop it first (nothing was changed)"
  fi
  mkdir -p "$PGDATA" || die 2 "cannot create PGDATA=$PGDATA"
  [[ -w $PGDATA ]] || die 2 "PGDATA=$PGDATA is not writable by uid $(id -u)"
  [[ -f $BASE_DIR/$base/backup_label ]] || die 1 "base backup $base is incomplete (no backup_label)"

  local stamp previous=none
  stamp=$(date -u +%Y%m%d%H%M%S)
  if [[ -n $(find "$PGDATA" -mindepth 1 -maxdepth 1 -print -quit) ]]; then
    if ((drop_old)); then
      find "$PGDATA" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
      previous=dropped
    else
      previous="$BACKUP_DIR/pre-restore-$stamp"
      mkdir -p "$previous"
      find "$PGDATA" -mindepth 1 -maxdepth 1 -exec mv -t "$previous" {} +
      previous="$previous (kept; remove it once satisfied)"
    fi
  fi

  log "restoring base backup $base into $PGDATA, then WAL to $to"
  cp -a "$BASE_DIR/$base/." "$PGDATA/" || die 1 "cannot copy $base into $PGDATA"
  chmod 0700 "$PGDATA"
  # The receiver is stopped (we hold its lock): everything complete goes to the archive, and the
  # segment it was writing joins pg_wal under its full name, so recovery replays up to the last
  # byte received.
  wal_archive_completed
  local partial
  partial=$(find "$WAL_STREAM" -maxdepth 1 -name '*.partial' -printf '%f\n' | sort | tail -n 1)
  [[ -z $partial ]] || cp "$WAL_STREAM/$partial" "$PGDATA/pg_wal/${partial%.partial}"
  touch "$PGDATA/recovery.signal"

  local sock=$TMP_DIR/restore-socket.$$ pglog=$TMP_DIR/restore-postgres.$$.log port=${BACKUP_RECOVERY_PORT:-5432}
  mkdir -p "$sock"
  local -a settings=(-c listen_addresses= -c "unix_socket_directories=$sock" -c "port=$port" -c archive_mode=off
    -c "restore_command=cp $WAL_ARCHIVE/%f %p" -c recovery_target_timeline=latest -c recovery_target_action=promote)
  [[ $to == latest ]] || settings+=(-c "recovery_target_time=$to")
  postgres -D "$PGDATA" "${settings[@]}" >"$pglog" 2>&1 &
  local pm=$! deadline=$((SECONDS + BACKUP_RECOVERY_TIMEOUT)) state=
  # shellcheck disable=SC2034 # read by the caller's EXIT trap
  PHYS_PM=$pm
  while :; do
    kill -0 "$pm" 2>/dev/null ||
      die 1 "recovery failed: $(grep -E 'FATAL|PANIC' "$pglog" | tail -n 2 | tr '\n' ' ') (data directory left as restored; see $pglog)"
    state=$(PGHOST=$sock PGPORT=$port psql_admin -c 'SELECT pg_is_in_recovery();' 2>/dev/null) || state=
    [[ $state == f ]] && break
    ((SECONDS < deadline)) || die 1 "recovery did not finish within $BACKUP_RECOVERY_TIMEOUT s (see $pglog)"
    sleep 0.5
  done
  local stats replayed timeline reasons=
  stats=$(PGHOST=$sock PGPORT=$port db_stats "$PGDATABASE") || die 1 "restored database $PGDATABASE is not readable"
  replayed=$(PGHOST=$sock PGPORT=$port psql_admin -c "SELECT coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'none');")
  timeline=$(PGHOST=$sock PGPORT=$port psql_admin -c 'SELECT timeline_id FROM pg_control_checkpoint();')
  local -a got
  IFS='|' read -r -a got <<<"$stats"
  [[ ${got[1]:-} == "${got[3]:-}" ]] || reasons+="count(visitors)=${got[1]:-} != sum(total_shards.visitors)=${got[3]:-}; "
  [[ ${got[2]:-} == "${got[4]:-}" ]] || reasons+="sum(visitors.visits)=${got[2]:-} != sum(total_shards.visits)=${got[4]:-}; "
  pg_ctl -D "$PGDATA" -m fast -w -t 120 stop >/dev/null || die 1 "the recovered server did not shut down cleanly (see $pglog)"
  # shellcheck disable=SC2034 # read by the caller's EXIT trap
  PHYS_PM=
  # The new timeline starts where recovery ended: the receiver streams it from scratch.
  find "$WAL_STREAM" -maxdepth 1 -type f -exec mv -t "$WAL_ARCHIVE" {} +
  rm -rf "$sock"
  [[ -z $reasons ]] || die 1 "restored database $PGDATABASE breaks the counter invariants: $reasons"
  summary "OK kind=pitr base=$base target=$to replayed_to=$replayed timeline=$timeline database=$PGDATABASE revision=${got[0]} visitors=${got[1]:-n/a} visits=${got[2]:-n/a} previous=$previous; start PostgreSQL, then the backup sidecar (it takes a base backup of the new timeline)"
}
