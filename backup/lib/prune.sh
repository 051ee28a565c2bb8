# shellcheck shell=bash
# Grandfather-father-son retention. For each rule, walk the backups newest first and keep the
# newest backup of each of the N most recent periods (hours, days, ISO weeks, months) that have a
# backup at all — so a gap in backups never makes retention delete the last good ones. A backup
# may satisfy several rules. The newest BACKUP_KEEP_LAST backups and `latest` are always kept.

: "${BACKUP_KEEP_LAST:=1}"
: "${BACKUP_KEEP_HOURLY:=0}"
: "${BACKUP_KEEP_DAILY:=7}"
: "${BACKUP_KEEP_WEEKLY:=4}"
: "${BACKUP_KEEP_MONTHLY:=6}"

# Names of complete backups (a .dump exists), newest first.
list_backups() {
  local f n
  for f in "$BACKUP_DIR/$BACKUP_PREFIX"-*.dump; do
    [[ -f $f ]] || continue
    n=$(basename "$f" .dump)
    valid_name "$n" && printf '%s\n' "$n"
  done | sort -r
}

# prune_backups [dry-run]; sets PRUNED to the number of backups removed.
prune_backups() {
  local dry=${1:-} n i
  local -a names=() periods=()
  local -A keep=() seen_h=() seen_d=() seen_w=() seen_m=()
  local v
  for v in BACKUP_KEEP_LAST BACKUP_KEEP_HOURLY BACKUP_KEEP_DAILY BACKUP_KEEP_WEEKLY BACKUP_KEEP_MONTHLY; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die 2 "$v must be a non-negative integer, got '${!v}'"
  done
  mapfile -t names < <(list_backups)
  PRUNED=0
  ((${#names[@]})) || return 0
  local latest
  latest=$(readlink "$BACKUP_DIR/latest" 2>/dev/null || true)
  latest=${latest%.dump}
  [[ -n $latest ]] && keep[$latest]=1
  # Hour, day and month come straight from the name; ISO weeks from one date(1) call for all.
  local -a weeks=()
  mapfile -t weeks < <(for n in "${names[@]}"; do
    local ts=${n##*-}
    printf '%s-%s-%s\n' "${ts:0:4}" "${ts:4:2}" "${ts:6:2}"
  done | date -u -f - +%G-W%V)
  ((${#weeks[@]} == ${#names[@]})) || die 1 "cannot compute ISO weeks of the backup names"
  for i in "${!names[@]}"; do
    n=${names[$i]}
    ((i < BACKUP_KEEP_LAST)) && keep[$n]=1
    local ts=${n##*-}
    periods=("${ts:0:11}" "${ts:0:8}" "${weeks[$i]}" "${ts:0:6}")
    if [[ -z ${seen_h[${periods[0]}]:-} ]] && ((${#seen_h[@]} < BACKUP_KEEP_HOURLY)); then
      seen_h[${periods[0]}]=1
      keep[$n]=1
    fi
    if [[ -z ${seen_d[${periods[1]}]:-} ]] && ((${#seen_d[@]} < BACKUP_KEEP_DAILY)); then
      seen_d[${periods[1]}]=1
      keep[$n]=1
    fi
    if [[ -z ${seen_w[${periods[2]}]:-} ]] && ((${#seen_w[@]} < BACKUP_KEEP_WEEKLY)); then
      seen_w[${periods[2]}]=1
      keep[$n]=1
    fi
    if [[ -z ${seen_m[${periods[3]}]:-} ]] && ((${#seen_m[@]} < BACKUP_KEEP_MONTHLY)); then
      seen_m[${periods[3]}]=1
      keep[$n]=1
    fi
  done
  for n in "${names[@]}"; do
    [[ -n ${keep[$n]:-} ]] && continue
    PRUNED=$((PRUNED + 1))
    if [[ $dry == dry-run ]]; then
      log "would remove $n"
    else
      log "retention: removing $n"
      # The dump goes first: without it the sidecar files no longer describe a backup.
      rm -f "$BACKUP_DIR/$n.dump"
      rm -f "$BACKUP_DIR/$n.dump.sha256" "$BACKUP_DIR/$n.manifest" "$BACKUP_DIR/$n.verify"
    fi
  done
  # Sidecar files whose dump is gone (a crash between the two removals above).
  local f base
  for f in "$BACKUP_DIR/$BACKUP_PREFIX"-*.manifest "$BACKUP_DIR/$BACKUP_PREFIX"-*.dump.sha256 "$BACKUP_DIR/$BACKUP_PREFIX"-*.verify; do
    [[ -f $f ]] || continue
    base=$(basename "$f")
    base=${base%%.*}
    valid_name "$base" || continue
    [[ -f $BACKUP_DIR/$base.dump ]] || [[ $dry == dry-run ]] || rm -f "$f"
  done
  return 0
}
