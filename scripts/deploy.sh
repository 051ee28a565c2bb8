#!/usr/bin/env bash
# Health-gated rolling deploy of Tally on one Docker host. Run it in the compose project directory (the one
# holding compose.yaml and .env). The CI deploy jobs call it over SSH; an operator runs the very same thing.
#
#   scripts/deploy.sh registry.example.com/tally:1.3.0-build.57   # full image reference
#   scripts/deploy.sh 1.3.0-build.57                              # tag only: keeps the current repository
#   scripts/deploy.sh --rollback                                  # back to the image recorded before the last deploy
#   scripts/deploy.sh --no-pull tally:local                       # an image built on this host (no registry)
#   scripts/deploy.sh --metrics-feed <traefik container id>       # only the drain's input (below); deploys nothing
#
# Order: record the running image -> pull -> `migrate` service -> for every old app replica: start one new
# replica next to it, wait until Docker reports it healthy (liveness) AND its /readyz answers 200 (database
# reachable, schema at head), then drain one old replica (its /readyz answers 503 until Traefik's metrics
# report it down, app/drain.py), then stop and remove it, then GET / through Traefik (the public
# path: TLS, router, middlewares, a real visit) until every try answered 200 with the page. Capacity never
# drops below the starting replica count. If a gate fails, the new containers are removed or swapped back,
# TALLY_IMAGE goes back to the previous image (.env and replicas) and the script exits non-zero.
#
# Environment: DOCKER (docker CLI, may be e.g. "sudo docker"), APP_SERVICE (app), MIGRATE_SERVICE (migrate),
# HEALTH_TIMEOUT seconds per replica (180), HEALTH_POLL_INTERVAL seconds (2), STOP_TIMEOUT seconds for the
# old replica's graceful stop (30, keep >= SHUTDOWN_DELAY + gunicorn's graceful timeout), DRAIN_TIMEOUT
# seconds to wait for Traefik to take an old replica out of rotation (15; after it, the replica is stopped
# anyway, with a warning), TRAEFIK_SERVICE (traefik), TRAEFIK_METRICS_URL (http://127.0.0.1:8082/metrics, read inside
# Traefik's container: no replica reaches it, traefik/dynamic/metrics.yml), ENV_FILE (.env),
# DEPLOY_STATE_DIR (.deploy), SKIP_MIGRATE=1 to skip migrations, SKIP_PULL=1 (= --no-pull),
# PAGE_URL (https://<DOMAIN from .env, else localhost>/), PAGE_CONNECT (127.0.0.1:<HTTPS_PORT from .env,
# else 443>: where that URL is sent, curl --connect-to), PAGE_TRIES GETs per step (3 x replicas; Traefik
# round-robins, so every replica is asked), PAGE_TIMEOUT seconds (HEALTH_TIMEOUT), SKIP_PAGE_CHECK=1 to skip
# the GET / gate.
set -euo pipefail

DOCKER=${DOCKER:-docker}
read -r -a DOCKER_CMD <<<"$DOCKER"
APP_SERVICE=${APP_SERVICE:-app}
MIGRATE_SERVICE=${MIGRATE_SERVICE:-migrate}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-180}
HEALTH_POLL_INTERVAL=${HEALTH_POLL_INTERVAL:-2}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-15}
TRAEFIK_SERVICE=${TRAEFIK_SERVICE:-traefik}
TRAEFIK_METRICS_URL=${TRAEFIK_METRICS_URL:-http://127.0.0.1:8082/metrics}
# Seconds between two snapshots of Traefik's metrics fed to the drain.
METRICS_FEED_INTERVAL=0.25
ENV_FILE=${ENV_FILE:-.env}
STATE_DIR=${DEPLOY_STATE_DIR:-.deploy}
SKIP_MIGRATE=${SKIP_MIGRATE:-0}
SKIP_PULL=${SKIP_PULL:-0}
SKIP_PAGE_CHECK=${SKIP_PAGE_CHECK:-0}
PAGE_TRIES=${PAGE_TRIES:-}
PAGE_TIMEOUT=${PAGE_TIMEOUT:-$HEALTH_TIMEOUT}
DEFAULT_IMAGE=tally:local
# What the page must contain: the visit line of app/templates/index.html (an error page has none).
PAGE_MARKER="You have visited this page"
# Run inside the new replica: readiness on its own port, before Traefik ever routes to it.
READY_PROBE="import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3).status == 200 else 1)"

# Set while running; the EXIT trap uses them to leave .env consistent with what is actually running.
previous=""
target=""
env_touched=0
finished=0
rolled_back=0
new_ids=()       # every container this run started
promoted_ids=()  # new containers that replaced an old one (they carry traffic)
started_id=""

log() { printf '%s deploy: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
warn() { printf '%s deploy: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { warn "ERROR: $*"; exit 1; }
short() { printf '%s' "${1:0:12}"; }

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

docker_() { "${DOCKER_CMD[@]}" "$@"; }
# TALLY_IMAGE is exported, so every compose call interpolates exactly the image being rolled out,
# whatever an operator's shell happens to export.
compose() { "${DOCKER_CMD[@]}" compose "$@"; }

running_app_ids() { compose ps -q --status running "$APP_SERVICE"; }

# Fill the array named $1 with the running replica ids. Not `mapfile < <(...)`: a failing `compose ps`
# inside a process substitution goes unnoticed by set -e, and an empty list would recreate every replica.
# shellcheck disable=SC2034 # `into` is a nameref: assigning it fills the caller's array
app_ids() {
    local -n into=$1
    local out
    out=$(running_app_ids) || { warn "'compose ps' failed; cannot tell which replicas run"; return 1; }
    into=()
    if [[ -n $out ]]; then mapfile -t into <<<"$out"; fi
}

env_get() {
    local key=${1:-TALLY_IMAGE}
    [[ -f $ENV_FILE ]] || return 0
    sed -n "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*//p" "$ENV_FILE" | tail -n 1 | tr -d "\"'"
}

env_set() {
    local value=$1 tmp
    if [[ -f $ENV_FILE ]] && grep -Eq '^[[:space:]]*TALLY_IMAGE[[:space:]]*=' "$ENV_FILE"; then
        tmp=$(mktemp)
        awk -v v="$value" '/^[[:space:]]*TALLY_IMAGE[[:space:]]*=/ { print "TALLY_IMAGE=" v; next } { print }' \
            "$ENV_FILE" >"$tmp"
        # Rewrite in place: .env holds secrets, its owner and mode must not change.
        cat "$tmp" >"$ENV_FILE"
        rm -f "$tmp"
    else
        printf 'TALLY_IMAGE=%s\n' "$value" >>"$ENV_FILE"
    fi
}

use_image() {
    export TALLY_IMAGE=$1
    env_set "$1"
    env_touched=1
}

# Repository part of an image reference (drops :tag and @digest; a registry port is not a tag).
repository_of() {
    local ref=${1%%@*} last
    last=${ref##*/}
    [[ $last == *:* ]] && ref=${ref%:*}
    printf '%s' "$ref"
}

contains() {
    local needle=$1 item
    shift
    for item in "$@"; do [[ $item == "$needle" ]] && return 0; done
    return 1
}

# Wait until a container's Docker health check says healthy. Fails fast on unhealthy or exited.
wait_healthy() {
    local id=$1 label=$2 state started=$SECONDS deadline=$((SECONDS + HEALTH_TIMEOUT))
    while :; do
        state=$(docker_ inspect --format \
            '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null) ||
            state=missing/none
        case $state in
            running/healthy)
                log "$label $(short "$id") healthy after $((SECONDS - started))s"
                return 0
                ;;
            running/unhealthy)
                warn "$label $(short "$id") is unhealthy"
                return 1
                ;;
            running/none)
                warn "$label $(short "$id") has no health check; refusing an ungated rollout"
                return 1
                ;;
            running/* | created/* | restarting/*) ;;
            *)
                # Exited/dead/gone: its health status is stale, waiting longer cannot help.
                warn "$label $(short "$id") is ${state%%/*}"
                return 1
                ;;
        esac
        if ((SECONDS >= deadline)); then
            warn "$label $(short "$id") not healthy within ${HEALTH_TIMEOUT}s (last state $state)"
            return 1
        fi
        sleep "$HEALTH_POLL_INTERVAL"
    done
}

# Readiness of one replica from inside it (/readyz: database reachable, schema at head).
wait_ready() {
    local id=$1 label=$2 deadline=$((SECONDS + HEALTH_TIMEOUT))
    until docker_ exec "$id" python -c "$READY_PROBE" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            warn "$label $(short "$id") /readyz not 200 within ${HEALTH_TIMEOUT}s"
            return 1
        fi
        sleep "$HEALTH_POLL_INTERVAL"
    done
    log "$label $(short "$id") ready (/readyz 200)"
}

# GET / through Traefik, as a visitor: every try must answer 200 with the page. A try that fails is
# repeated until HEALTH_TIMEOUT (Traefik takes a few seconds to notice a replica that left).
page_check() {
    local label=$1 tries=$PAGE_TRIES url connect ok=0 body deadline=$((SECONDS + PAGE_TIMEOUT)) n ids_now=()
    ((SKIP_PAGE_CHECK == 1)) && return 0
    if [[ -z $tries ]]; then
        app_ids ids_now || return 1
        tries=$((3 * ${#ids_now[@]}))
    fi
    url=${PAGE_URL:-https://$(env_get DOMAIN | grep . || echo localhost)/}
    connect=${PAGE_CONNECT:-127.0.0.1:$(env_get HTTPS_PORT | grep . || echo 443)}
    n=${url#*://}
    n=${n%%/*}
    [[ $n == *:* ]] || n="$n:443"
    while ((ok < tries)); do
        # -k: the certificate may be Traefik's default or not yet issued; the body is what is checked.
        if body=$(curl -fsSk --max-time 10 --connect-to "$n:$connect" -H "User-Agent: tally-deploy" "$url") &&
            [[ $body == *"$PAGE_MARKER"* ]]; then
            ok=$((ok + 1))
            continue
        fi
        ok=0
        if ((SECONDS >= deadline)); then
            warn "$label GET $url did not answer the page ${tries} times in a row within ${PAGE_TIMEOUT}s"
            return 1
        fi
        sleep "$HEALTH_POLL_INTERVAL"
    done
    log "$label GET $url: ${tries} x 200 with the page"
}

# Start one replica with the current TALLY_IMAGE next to the running ones; its id lands in $started_id.
# (A global, not stdout: new_ids must be updated in this shell, not in a command substitution's subshell.)
start_one() {
    local before=() after=() id count fresh=()
    started_id=""
    app_ids before || return 1
    count=${#before[@]}
    compose up -d --no-deps --scale "$APP_SERVICE=$((count + 1))" --no-recreate "$APP_SERVICE" || return 1
    app_ids after || return 1
    for id in "${after[@]}"; do
        contains "$id" "${before[@]}" || fresh+=("$id")
    done
    new_ids+=("${fresh[@]}")
    if ((${#fresh[@]} != 1)); then
        warn "expected exactly one new $APP_SERVICE container, found ${#fresh[@]}: ${fresh[*]}"
        return 1
    fi
    started_id=${fresh[0]}
}

# Out of Traefik's rotation before the stop: gunicorn closes its listener at SIGTERM, and until Traefik's next
# health check it would still send requests there (refused dials; a retry may land on it again). The replica
# runs app/drain.py, fed with Traefik's metrics read inside Traefik's container (the replicas do not reach
# Traefik's metrics port): it waits until Traefik reports the new replica up (so Traefik's rebuild of its balancer
# for the new container, which counts every server up again, is behind us), makes its own /readyz answer 503,
# then waits until Traefik's own metrics report it down. Never
# fails the deploy: an image without the drain, or a Traefik that does not confirm in time, gets the plain
# graceful stop, with a warning.
addresses_of() {
    docker_ inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" || true
}

# Snapshots of Traefik's metrics on stdout, each ended by "# EOF" (app/drain.py --metrics-url -), until the
# reader goes away (SIGPIPE ignored: the failed write ends the loop, and the function returns 0). Also run
# alone (--metrics-feed) by the compose drills' graceful restart (drills/compose.py), which drains the same way.
traefik_metrics_feed() {
    local traefik=$1
    trap '' PIPE
    while :; do
        docker_ exec "$traefik" wget -q -T 2 -O - "$TRAEFIK_METRICS_URL" 2>/dev/null || true
        printf '# EOF\n' 2>/dev/null || return 0
        sleep "$METRICS_FEED_INTERVAL"
    done
}

drain() {
    local id=$1 label=$2 successor=$3 out rc=0 addresses=() after=() address traefik
    read -r -a addresses <<<"$(addresses_of "$id")"
    if ((${#addresses[@]} == 0)); then
        warn "$label $(short "$id") has no network address; stopping it without draining"
        return 0
    fi
    traefik=$(compose ps -q "$TRAEFIK_SERVICE" | head -n 1) || traefik=""
    if [[ -z $traefik ]]; then
        warn "$label no running $TRAEFIK_SERVICE container to read the drain from; stopping $(short "$id") without draining"
        return 0
    fi
    for address in $(addresses_of "$successor"); do after+=(--after-up "$address"); done
    # The pipeline's status is the drain's (the feed returns 0 once the drain is gone).
    out=$(traefik_metrics_feed "$traefik" |
        docker_ exec -i "$id" python -m app.drain --metrics-url - --timeout "$DRAIN_TIMEOUT" \
            "${after[@]}" "${addresses[@]}" 2>&1) || rc=$?
    if ((rc == 0)); then
        log "$label $(short "$id") ${out##*drain: }"
    else
        warn "$label $(short "$id") not drained (exit $rc: ${out##*drain: }); stopping it anyway"
    fi
}

stop_remove() {
    local id=$1
    docker_ stop --time "$STOP_TIMEOUT" "$id" >/dev/null || return 1
    docker_ rm "$id" >/dev/null
}

# Replace one running container by a fresh one of TALLY_IMAGE; the old one goes only once the new is healthy.
replace_one() {
    local old=$1 label=$2 new
    start_one || return 1
    new=$started_id
    log "$label started $(short "$new") ($TALLY_IMAGE), waiting for healthy (timeout ${HEALTH_TIMEOUT}s)"
    wait_healthy "$new" "$label" || return 1
    wait_ready "$new" "$label" || return 1
    promoted_ids+=("$new")
    drain "$old" "$label" "$new"
    log "$label stopping old replica $(short "$old")"
    stop_remove "$old" || return 1
    log "$label replaced $(short "$old") -> $(short "$new")"
    page_check "$label"
}

rollback() {
    local reason=$1 id i=0 failed=() to_swap=() running
    rolled_back=1
    warn "ROLLBACK ($reason): returning to $previous"
    use_image "$previous"
    # New containers that never became healthy carry no traffic: remove at once.
    for id in "${new_ids[@]}"; do
        contains "$id" "${promoted_ids[@]}" || failed+=("$id")
    done
    for id in "${failed[@]}"; do
        warn "rollback: removing new replica $(short "$id")"
        docker_ rm -f "$id" >/dev/null || warn "rollback: could not remove $(short "$id")"
    done
    # Promoted ones serve requests: swap them back one at a time, health-gated like the rollout.
    to_swap=("${promoted_ids[@]}")
    for id in "${to_swap[@]}"; do
        i=$((i + 1))
        if ! replace_one "$id" "[rollback $i/${#to_swap[@]}]"; then
            for running in "${new_ids[@]}"; do
                contains "$running" "${promoted_ids[@]}" || docker_ rm -f "$running" >/dev/null 2>&1 || true
            done
            warn "rollback INCOMPLETE: $previous did not become healthy either;" \
                "kept the healthy replicas of $target: ${to_swap[*]:i-1}"
            return 1
        fi
    done
    warn "rollback complete: $APP_SERVICE runs $previous"
}

on_exit() {
    local rc=$?
    if ((rc != 0 && finished == 0 && env_touched == 1 && rolled_back == 0)) && [[ -n $previous ]]; then
        # Died before any replica changed (pull/migrate failed, interrupted): .env must keep naming what runs.
        if ((${#promoted_ids[@]} == 0)); then
            for id in "${new_ids[@]}"; do docker_ rm -f "$id" >/dev/null 2>&1 || true; done
            env_set "$previous"
            warn "aborted; TALLY_IMAGE restored to $previous"
        fi
    fi
    exit "$rc"
}

main() {
    local arg="" mode=deploy old_ids=() n i id
    if [[ ${1:-} == --metrics-feed ]]; then
        (($# == 2)) || usage
        traefik_metrics_feed "$2"
        return 0
    fi
    while (($#)); do
        case $1 in
            --rollback) mode=rollback ;;
            --skip-migrate) SKIP_MIGRATE=1 ;;
            --no-pull) SKIP_PULL=1 ;;
            -h | --help) usage ;;
            -*) usage ;;
            *) [[ -z $arg ]] || usage; arg=$1 ;;
        esac
        shift
    done
    if [[ $mode == rollback ]]; then
        [[ -z $arg ]] || usage
    else
        [[ -n $arg ]] || usage
    fi

    if [[ $SKIP_PAGE_CHECK != 1 ]] && ! command -v curl >/dev/null 2>&1; then
        die "curl is needed for the GET / gate through Traefik (install it, or SKIP_PAGE_CHECK=1); nothing was changed"
    fi
    mkdir -p "$STATE_DIR"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE_DIR/lock"
        flock -n 9 || die "another deploy holds $STATE_DIR/lock"
    fi

    app_ids old_ids || die "cannot list the running $APP_SERVICE replicas; nothing was changed"
    n=${#old_ids[@]}
    if ((n > 0)); then
        previous=$(docker_ inspect --format '{{.Config.Image}}' "${old_ids[0]}")
    fi
    [[ -n $previous ]] || previous=$(env_get)
    [[ -n $previous ]] || previous=$DEFAULT_IMAGE

    if [[ $mode == rollback ]]; then
        [[ -s $STATE_DIR/previous-image ]] || die "no $STATE_DIR/previous-image recorded; pass an image instead"
        target=$(<"$STATE_DIR/previous-image")
        # The schema may be ahead of the old image; an old image's migrations cannot run against it.
        SKIP_MIGRATE=1
    elif [[ $arg =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
        target="$(repository_of "$previous"):$arg"
    else
        target=$arg
    fi

    printf '%s\n' "$previous" >"$STATE_DIR/previous-image"
    printf '%s %s %s -> %s\n' "$(date -u +%FT%TZ)" "$mode" "$previous" "$target" >>"$STATE_DIR/history"
    log "rolling $APP_SERVICE from $previous to $target ($n running replica(s))"

    use_image "$target"

    if [[ $SKIP_PULL == 1 ]]; then
        log "not pulling (--no-pull): $target must already be on this host"
    else
        log "pulling images"
        compose pull || die "pull failed; nothing was changed"
    fi

    if [[ $SKIP_MIGRATE == 1 ]]; then
        log "skipping migrations"
    else
        log "running migrations ($MIGRATE_SERVICE service)"
        compose run --rm "$MIGRATE_SERVICE" || die "migrations failed; no replica was replaced"
    fi

    if ((n == 0)); then
        log "no running $APP_SERVICE replica: starting fresh"
        compose up -d --no-deps "$APP_SERVICE" || { rollback "start failed"; exit 1; }
        app_ids new_ids || { rollback "cannot list the new replicas"; exit 1; }
        ((${#new_ids[@]} > 0)) || { rollback "no replica started"; exit 1; }
        i=0
        for id in "${new_ids[@]}"; do
            i=$((i + 1))
            wait_healthy "$id" "[$i/${#new_ids[@]}]" || { rollback "replica $(short "$id") not healthy"; exit 1; }
            wait_ready "$id" "[$i/${#new_ids[@]}]" || { rollback "replica $(short "$id") not ready"; exit 1; }
        done
        page_check "[fresh]" || { rollback "GET / through Traefik failed"; exit 1; }
    else
        i=0
        for id in "${old_ids[@]}"; do
            i=$((i + 1))
            if ! replace_one "$id" "[$i/$n]"; then
                rollback "replica $i of $n failed" || true
                exit 1
            fi
        done
    fi

    finished=1
    app_ids new_ids || true
    log "deploy complete: ${#new_ids[@]} $APP_SERVICE replica(s) on $target"
}

trap on_exit EXIT
main "$@"
