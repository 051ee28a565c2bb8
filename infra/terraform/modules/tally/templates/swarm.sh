#!/bin/bash
# tally-swarm: first boot of a Tally swarm host on EC2 (database = "rds").
#
# Run once by cloud-init instead of `tally-bootstrap`, whose functions it
# sources (packages, Docker, data volume, checkout, SSM secrets, .env).
# TALLY_SWARM_ROLE decides:
#   manager: mount the data volume, fetch the repository, write secrets/
#            (SSM; postgres_password from the RDS-managed secret; db_ca from
#            AWS's RDS trust store; with TALLY_BACKUP_AGE_RECIPIENT the
#            offsite copy's files and their credentials timer, as on one
#            host), publish dockerd's metrics on the private
#            address :9323, `docker swarm init`, publish the worker
#            join token in SSM, create the Swarm secrets, render and deploy
#            the stack (swarm/render.py), wait for /healthz.
#   worker:  install Docker, read the join token from SSM, join.
# Idempotent: re-run it (`sudo tally-swarm`) after fixing a failure, or on
# the manager after RDS rotated its master password (migrate reads it).

set -Eeuo pipefail

TALLY_BOOTSTRAP=${TALLY_BOOTSTRAP:-/usr/local/sbin/tally-bootstrap}
TALLY_STACK_DIR=${TALLY_STACK_DIR:-/srv/tally-stack}
TALLY_DOCKER_DAEMON_JSON=${TALLY_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
# shellcheck source-path=SCRIPTDIR source=bootstrap.sh
. "$TALLY_BOOTSTRAP"

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}'; }

# The manager's private address, the one workers reach on 2377.
private_address() {
  local token
  token=$(curl -fsS --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$IMDS/latest/api/token")
  curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/local-ipv4"
}

# A manager's dockerd exports swarm_manager_tasks_total and
# swarm_manager_nodes, which Prometheus (on this host) scrapes for the Swarm
# task and node alerts. Bound to the private address only, never 0.0.0.0:
# the scrape stays on this host, so no security-group rule opens 9323.
# The other keys of daemon.json (cloud-init's) are kept; docker restarts only
# when the file changes, so a re-run restarts nothing.
engine_metrics() {
  local want=$1:9323 file=$TALLY_DOCKER_DAEMON_JSON json='{}' have
  if [[ -s $file ]]; then
    json=$(<"$file")
    have=$(jq -r '."metrics-addr" // empty' <<<"$json") || die "$file is not a JSON object"
    [[ $have == "$want" ]] && return 0
  fi
  mkdir -p "${file%/*}"
  jq --arg addr "$want" '."metrics-addr" = $addr' <<<"$json" >"$file.new"
  chmod 0644 "$file.new"
  mv "$file.new" "$file"
  log "dockerd metrics on $want: restarting docker"
  systemctl restart docker
  retry 120 docker info >/dev/null || die "docker did not come back after the restart"
}

swarm_init() {
  local addr tmp
  addr=$(retry 120 private_address) || die "no private address from IMDS"
  engine_metrics "$addr"
  if [[ $(swarm_state) != active ]]; then
    docker swarm init --advertise-addr "$addr" >/dev/null
    log "swarm initialised on $addr"
  fi
  # The database's clients and the backup sidecar's volume, and monitoring,
  # stay on the manager (swarm/compose.swarm.yaml's placement labels).
  docker node update --label-add tally.db=true --label-add tally.monitoring=true "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
  tmp=$(mktemp)
  chmod 0600 "$tmp"
  printf '%s %s:2377' "$(docker swarm join-token -q worker)" "$addr" >"$tmp"
  # --overwrite: a replaced manager starts a new swarm (IAM allows it on
  # this one parameter only).
  retry 300 aws ssm put-parameter --region "$TALLY_AWS_REGION" --name "$TALLY_SWARM_JOIN_PARAM" \
    --type SecureString --overwrite --description "Tally swarm worker join token" --value "file://$tmp" >/dev/null
  rm -f "$tmp"
}

swarm_join() {
  local value
  [[ $(swarm_state) == active ]] && return 0
  log "waiting for the manager's join token in $TALLY_SWARM_JOIN_PARAM"
  value=$(retry 1800 ssm_get "$TALLY_SWARM_JOIN_PARAM") || die "no join token in $TALLY_SWARM_JOIN_PARAM"
  # shellcheck disable=SC2086 # "<token> <address>": two words on purpose
  set -- $value
  retry 600 docker swarm join --token "$1" "$2"
  log "joined the swarm at $2"
}

# secrets/postgres_password: the RDS master password, which RDS keeps in
# Secrets Manager (the module never sees it).
write_db_password() {
  local file=$TALLY_CHECKOUT/secrets/postgres_password
  retry 300 aws secretsmanager get-secret-value --region "$TALLY_AWS_REGION" --secret-id "$TALLY_DB_PASSWORD_SECRET" \
    --query SecretString --output text | jq -j .password >"$file.new"
  [[ -s $file.new ]] || die "the RDS master secret $TALLY_DB_PASSWORD_SECRET has no password"
  chmod 0644 "$file.new"
  mv "$file.new" "$file"
}

# secrets/db_ca: the certificate bundle of RDS's CAs for this region, which
# clients verify the server against (sslmode=verify-full).
write_db_ca() {
  local file=$TALLY_CHECKOUT/secrets/db_ca
  retry 600 curl -fsSL --proto '=https' --tlsv1.2 -o "$file.new" "$TALLY_DB_CA_URL"
  grep -q -- '-----BEGIN CERTIFICATE-----' "$file.new" || die "$TALLY_DB_CA_URL is not a PEM bundle"
  chmod 0644 "$file.new"
  mv "$file.new" "$file"
}

# secrets/blackbox_web_config: blackbox_exporter's basic auth (a bcrypt hash of
# blackbox_password), made by the single host's secrets-init job run on
# secrets/ itself: it checks every value there and derives the file, the same
# file again while the password is the same.
derive_secrets() {
  local dir=$TALLY_CHECKOUT/secrets
  python3 "$TALLY_CHECKOUT/scripts/secrets_init.py" --import-dir "$dir" --store "$dir" >/dev/null ||
    die "secrets/ failed the checks of scripts/secrets_init.py"
  [[ -s $dir/blackbox_web_config ]] || die "secrets/blackbox_web_config was not derived"
}

# Create every secret the rendered stack declares from secrets/<name>. Swarm
# secrets are immutable: a changed postgres_password (RDS rotates it) is
# swapped after removing migrate, its only reader.
create_swarm_secrets() {
  local name file digest current
  for name in $(python3 -c 'import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))["secrets"])' "$1"); do
    file=$TALLY_CHECKOUT/secrets/$name
    [[ -s $file ]] || die "secret $name: $file is missing"
    digest=$(sha256sum "$file" | cut -c1-64)
    current=$(docker secret inspect --format '{{index .Spec.Labels "tally.sha256"}}' "$name" 2>/dev/null || true)
    [[ $current == "$digest" ]] && continue
    if [[ -n $current ]]; then
      [[ $name == postgres_password ]] || die "secret $name changed; Swarm secrets are immutable (docs/scaling.md)"
      docker service rm tally_migrate >/dev/null 2>&1 || true
      retry 60 docker secret rm "$name" >/dev/null
    fi
    docker secret create --label "tally.sha256=$digest" "$name" "$file" >/dev/null
    log "created Swarm secret $name"
  done
}

# With a recipient, the offsite overlay as on one host: backup_age_recipient
# becomes a Swarm secret; aws_credentials stays a read-only bind of
# secrets/aws_credentials, which the credentials timer renews in place (a
# Swarm secret cannot change).
deploy_stack() {
  local overlay=()
  cd "$TALLY_CHECKOUT"
  [[ -z ${TALLY_BACKUP_AGE_RECIPIENT:-} ]] || overlay=(-f backup/compose.offsite.yaml)
  TALLY_DATABASE_HOST=$TALLY_DATABASE_HOST python3 swarm/render.py --out "$TALLY_STACK_DIR" "${overlay[@]}"
  create_swarm_secrets "$TALLY_STACK_DIR/tally-stack.yaml"
  retry 900 docker stack deploy --detach=true -c "$TALLY_STACK_DIR/tally-stack.yaml" tally
}

swarm_manager() {
  apt_install python3-yaml
  fetch_repo
  write_secrets
  write_db_password
  write_db_ca
  derive_secrets
  write_backup_credentials
  install_credentials_timer
  write_dotenv
  swarm_init
  deploy_stack
  wait_healthy
}

swarm_main() {
  [[ $EUID -eq 0 ]] || die "run as root"
  # shellcheck source=/dev/null
  . "$TALLY_CONFIG"
  : "${TALLY_AWS_REGION:?}" "${TALLY_SWARM_ROLE:?}" "${TALLY_SWARM_JOIN_PARAM:?}" "${TALLY_INSTALL_SSM_AGENT:?}" "${TALLY_SWAP_MB:?}"
  export AWS_DEFAULT_REGION=$TALLY_AWS_REGION
  umask 022

  if [[ $TALLY_SWARM_ROLE == manager ]]; then
    : "${TALLY_DATABASE_HOST:?}" "${TALLY_DB_PASSWORD_SECRET:?}" "${TALLY_DB_CA_URL:?}" "${TALLY_PUBLIC_HOST:?}"
    mount_data_volume
  fi
  ensure_swap
  install_base_packages
  install_ssm_agent
  install_docker
  if [[ $TALLY_SWARM_ROLE == worker ]]; then
    swarm_join
  else
    swarm_manager
  fi
  date -u +%Y-%m-%dT%H:%M:%SZ >/etc/tally/bootstrap.done
}

if ! (return 0 2>/dev/null); then
  swarm_main "$@"
fi
