# shellcheck shell=bash
# Continuous archiving (sourced after common.sh). PostgreSQL's own tools over the replication
# protocol: pg_receivewal streams the WAL into $BACKUP_DIR/wal/stream through a replication slot
# (the server keeps what the sidecar has not flushed yet, across restarts of either side), completed
# segments are moved to $BACKUP_DIR/wal/archive, and pg_basebackup takes base backups into
# $BACKUP_DIR/base. restore --to replays a base backup plus the archive to any moment after it.

: "${BACKUP_PITR:=true}"
: "${BACKUP_WAL_SLOT:=tally_backup}"
: "${BACKUP_BASE_KEEP:=2}"
: "${PG_BASEBACKUP:=pg_basebackup}"

# shellcheck disable=SC2153 # set by common.sh
WAL_DIR="$BACKUP_DIR/wal"
WAL_STREAM="$WAL_DIR/stream"
WAL_ARCHIVE="$WAL_DIR/archive"
BASE_DIR="$BACKUP_DIR/base"
# Held by the scheduler for as long as it streams; a physical restore needs it free.
# shellcheck disable=SC2034 # read by the sourcing commands
RECEIVER_LOCK="$WAL_DIR/.receiver.lock"
BASE_NAME_RE="^${BACKUP_PREFIX}-base-[0-9]{8}T[0-9]{6}Z$"
# 24 hex digits: timeline, log, segment. History files are <timeline>.history.
SEGMENT_RE='^[0-9A-F]{24}$'

pitr_enabled() { [[ $BACKUP_PITR == true ]]; }

valid_base_name() { [[ $1 =~ $BASE_NAME_RE ]]; }

pitr_dirs() {
  mkdir -p "$WAL_STREAM" "$WAL_ARCHIVE" "$BASE_DIR" || die 2 "cannot create the WAL and base backup directories"
}

# Completed segments and timeline history files leave pg_receivewal's directory for the archive;
# only the segment being written (.partial) stays. A segment is complete once pg_receivewal has
# renamed it from .partial, after fsync.
wal_archive_completed() {
  local f n moved=0
  for f in "$WAL_STREAM"/*; do
    [[ -f $f ]] || continue
    n=${f##*/}
    if [[ $n =~ $SEGMENT_RE || $n =~ ^[0-9A-F]{8}\.history$ ]]; then
      mv -f "$f" "$WAL_ARCHIVE/$n" && moved=1
    fi
  done
  ((moved == 0)) || sync "$WAL_ARCHIVE"
}

# Names of complete base backups (a manifest exists), newest first.
list_bases() {
  local f n
  for f in "$BASE_DIR/$BACKUP_PREFIX"-base-*.manifest; do
    [[ -f $f ]] || continue
    n=$(basename "$f" .manifest)
    valid_base_name "$n" && [[ -d $BASE_DIR/$n ]] && printf '%s\n' "$n"
  done | sort -r
}

base_get() { manifest_get "$BASE_DIR/$1.manifest" "$2"; }

# The WAL file a base backup starts from, from its backup_label: everything before it in the
# archive is needed by no base backup taken later.
base_start_segment() {
  sed -n 's/^START WAL LOCATION: .* (file \([0-9A-F]\{24\}\))$/\1/p' "$BASE_DIR/$1/backup_label"
}

# Keep the BACKUP_BASE_KEEP newest base backups, then remove the archived WAL that precedes the
# oldest one kept (pg_archivecleanup compares positions, whatever the timeline). WAL a kept base
# backup needs is therefore never removed. Sets PRUNED_BASES.
prune_bases() {
  [[ $BACKUP_BASE_KEEP =~ ^[1-9][0-9]*$ ]] || die 2 "BACKUP_BASE_KEEP must be a positive integer, got '$BACKUP_BASE_KEEP'"
  local -a names=()
  mapfile -t names < <(list_bases)
  PRUNED_BASES=0
  ((${#names[@]})) || return 0
  local i
  for ((i = BACKUP_BASE_KEEP; i < ${#names[@]}; i++)); do
    log "retention: removing base backup ${names[$i]}"
    rm -f "$BASE_DIR/${names[$i]}.manifest"
    rm -rf "${BASE_DIR:?}/${names[$i]}"
    PRUNED_BASES=$((PRUNED_BASES + 1))
  done
  local oldest=${names[$((${#names[@]} > BACKUP_BASE_KEEP ? BACKUP_BASE_KEEP - 1 : ${#names[@]} - 1))]} start
  start=$(base_start_segment "$oldest")
  [[ $start =~ $SEGMENT_RE ]] || { log "cannot read the start WAL file of $oldest; archive left as is"; return 0; }
  # A segment completed just before this base backup may still wait in the stream directory for the
  # scheduler's next pass; moved now, it is cleaned now instead of staying until the next base backup.
  wal_archive_completed
  pg_archivecleanup "$WAL_ARCHIVE" "$start" || log "pg_archivecleanup failed; archive left as is"
}

# Newest base backup finished at or before epoch $1 (or the newest at all without $1) into RESOLVED.
resolve_base_for() {
  local target=${1:-} n end
  while IFS= read -r n; do
    end=$(base_get "$n" finished_epoch)
    if [[ -z $target ]] || ((end <= target)); then
      # shellcheck disable=SC2034 # read by the sourcing command
      RESOLVED=$n
      return 0
    fi
  done < <(list_bases)
  return 1
}

# Bytes and files under a directory (find, so it works on the busybox-less image too).
dir_usage() { find "$1" -type f -printf '%s\n' 2>/dev/null | awk '{ n++; s += $1 } END { printf "%d %d\n", n, s }'; }
