#!/bin/bash
# tally-bootstrap: first-boot provisioning of a Tally server on EC2.
#
# Run once by cloud-init (runcmd). Idempotent, so an operator can re-run it
# after fixing a failure: `sudo tally-bootstrap`. Steps:
#   1. mount the data volume (format it only when it is blank)
#   2. install Docker Engine + the compose plugin from Docker's apt repository
#   3. fetch the repository at the pinned ref
#   4. write .env (from /etc/tally/stack.env) and secrets/ (from SSM)
#   5. docker compose up -d, then wait for /healthz
#
# Settings come from /etc/tally/bootstrap.env (written by cloud-init).
# Sourcing this file only defines functions, which the test suite uses.

set -Eeuo pipefail

TALLY_CONFIG=${TALLY_CONFIG:-/etc/tally/bootstrap.env}
TALLY_STACK_ENV=${TALLY_STACK_ENV:-/etc/tally/stack.env}
TALLY_CHECKOUT=${TALLY_CHECKOUT:-/opt/tally}
TALLY_FSTAB=${TALLY_FSTAB:-/etc/fstab}
TALLY_SYSTEMD_DIR=${TALLY_SYSTEMD_DIR:-/etc/systemd/system}
# How long transient SSM errors are retried before the bootstrap gives up.
TALLY_SSM_RETRY_SECONDS=${TALLY_SSM_RETRY_SECONDS:-300}

# Docker's release signing key (https://docs.docker.com/engine/install/debian/).
DOCKER_KEY_FINGERPRINT=9DC858229FC7DD38854AE2D88D81803C0EBFCD88

log() { printf '%s tally-bootstrap: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# retry SECONDS CMD...: re-run CMD with capped exponential backoff until it
# succeeds or SECONDS have passed. Network steps need it: the Elastic IP is
# associated only after the instance is running.
retry() {
  local deadline=$((SECONDS + $1)) delay=2
  shift
  until "$@"; do
    if ((SECONDS >= deadline)); then
      log "giving up: $*"
      return 1
    fi
    log "retrying in ${delay}s: $*"
    sleep "$delay"
    if ((delay < 30)); then delay=$((delay * 2)); fi
  done
}

# Nitro instances expose EBS volumes as NVMe devices whose serial is the
# volume id without its dash; Xen instances keep the requested /dev/xvdf.
data_device() {
  local serial=${TALLY_DATA_VOLUME_ID//-/} candidate
  for candidate in "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${serial}" /dev/xvdf /dev/sdf; do
    if [[ -b $candidate ]]; then
      readlink -f "$candidate"
      return 0
    fi
  done
  return 1
}

# Format DEVICE only when blkid finds nothing on it (exit status 2). Any
# other failure stops the bootstrap: formatting a volume we could not read
# would destroy the database.
ensure_filesystem() {
  local dev=$1 rc=0
  blkid -p "$dev" >/dev/null 2>&1 || rc=$?
  case $rc in
    0) log "data volume $dev already has a filesystem: keeping it" ;;
    2)
      log "data volume $dev is blank: creating ext4"
      mkfs.ext4 -q -L tally-data "$dev"
      ;;
    *) die "blkid failed on $dev (exit $rc): refusing to format" ;;
  esac
}

mount_data_volume() {
  local dev uuid
  log "waiting for data volume $TALLY_DATA_VOLUME_ID"
  retry 900 data_device >/dev/null || die "data volume $TALLY_DATA_VOLUME_ID never appeared"
  dev=$(data_device)
  ensure_filesystem "$dev"
  uuid=$(blkid -s UUID -o value "$dev")
  [[ -n $uuid ]] || die "no filesystem UUID on $dev"
  mkdir -p "$TALLY_DATA_MOUNT"
  if ! grep -q "^UUID=$uuid " "$TALLY_FSTAB"; then
    # nofail: a missing volume must not block boot (SSM/SSH stay usable);
    # Docker's RequiresMountsFor keeps the stack down instead.
    printf 'UUID=%s %s ext4 defaults,nofail,x-systemd.device-timeout=5min 0 2\n' "$uuid" "$TALLY_DATA_MOUNT" >>"$TALLY_FSTAB"
  fi
  systemctl daemon-reload
  mountpoint -q "$TALLY_DATA_MOUNT" || mount "$TALLY_DATA_MOUNT"
  # An image with Docker preinstalled may have started it on the root disk.
  if systemctl is-active -q docker; then systemctl restart docker; fi
  # Picks up a volume enlarged with `terraform apply` (a no-op otherwise).
  resize2fs "$dev" >/dev/null 2>&1 || log "resize2fs on $dev failed; continuing"
}

ensure_swap() {
  local swapfile=/swapfile
  if ((TALLY_SWAP_MB == 0)) || swapon --show=NAME --noheadings | grep -qx "$swapfile"; then
    return 0
  fi
  if [[ ! -f $swapfile ]]; then
    log "creating ${TALLY_SWAP_MB} MiB swap file"
    fallocate -l "${TALLY_SWAP_MB}M" "$swapfile"
    chmod 0600 "$swapfile"
    mkswap "$swapfile" >/dev/null
  fi
  grep -q "^$swapfile " "$TALLY_FSTAB" || printf '%s none swap sw 0 0\n' "$swapfile" >>"$TALLY_FSTAB"
  swapon "$swapfile"
}

apt_install() {
  retry 600 apt-get install -y -q --no-install-recommends "$@"
}

install_base_packages() {
  export DEBIAN_FRONTEND=noninteractive
  retry 900 apt-get update -q
  apt_install ca-certificates curl gnupg git jq openssl awscli
}

install_docker() {
  local keyring=/etc/apt/keyrings/docker.asc fingerprint arch codename
  if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
    log "docker and the compose plugin are already installed"
    return 0
  fi
  install -d -m 0755 /etc/apt/keyrings
  retry 600 curl -fsSL --proto '=https' --tlsv1.2 -o "$keyring.new" https://download.docker.com/linux/debian/gpg
  fingerprint=$(gpg --show-keys --with-colons "$keyring.new" | awk -F: '$1 == "fpr" { print $10; exit }')
  [[ $fingerprint == "$DOCKER_KEY_FINGERPRINT" ]] || die "Docker apt key fingerprint is '$fingerprint', expected $DOCKER_KEY_FINGERPRINT"
  mv "$keyring.new" "$keyring"
  chmod 0644 "$keyring"
  arch=$(dpkg --print-architecture)
  # shellcheck source=/dev/null
  codename=$(. /etc/os-release && printf '%s' "$VERSION_CODENAME")
  printf 'deb [arch=%s signed-by=%s] https://download.docker.com/linux/debian %s stable\n' \
    "$arch" "$keyring" "$codename" >/etc/apt/sources.list.d/docker.list
  retry 600 apt-get update -q
  apt_install docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
  systemctl enable --now docker
}

install_ssm_agent() {
  local deb=/tmp/amazon-ssm-agent.deb arch
  [[ $TALLY_INSTALL_SSM_AGENT == true ]] || return 0
  if dpkg-query -W -f='${Status}' amazon-ssm-agent 2>/dev/null | grep -q 'install ok installed'; then
    return 0
  fi
  # Debian's images do not ship the agent; AWS publishes it per region.
  arch=$(dpkg --print-architecture)
  retry 600 curl -fsSL --proto '=https' --tlsv1.2 -o "$deb" \
    "https://s3.${TALLY_AWS_REGION}.amazonaws.com/amazon-ssm-${TALLY_AWS_REGION}/latest/debian_${arch}/amazon-ssm-agent.deb"
  dpkg -i "$deb"
  rm -f "$deb"
  systemctl enable --now amazon-ssm-agent
}

fetch_repo() {
  mkdir -p "$TALLY_CHECKOUT"
  if [[ ! -d $TALLY_CHECKOUT/.git ]]; then
    git -C "$TALLY_CHECKOUT" init -q
    git -C "$TALLY_CHECKOUT" remote add origin "$TALLY_REPO_URL"
  else
    git -C "$TALLY_CHECKOUT" remote set-url origin "$TALLY_REPO_URL"
  fi
  # Fetching the one ref works for tags, branches and full commit SHAs.
  retry 600 git -C "$TALLY_CHECKOUT" fetch -q --depth 1 origin "$TALLY_REPO_REF"
  git -C "$TALLY_CHECKOUT" checkout -q --force --detach FETCH_HEAD
  log "checked out $TALLY_REPO_REF ($(git -C "$TALLY_CHECKOUT" rev-parse --short HEAD))"
}

# Print SSM parameter NAME's decrypted value. Exit 3 when it does not exist,
# 1 on any other error.
ssm_get() {
  local out err rc=0
  err=$(mktemp)
  out=$(aws ssm get-parameter --region "$TALLY_AWS_REGION" --name "$1" --with-decryption \
    --query Parameter.Value --output text 2>"$err") || rc=$?
  if ((rc == 0)); then
    rm -f "$err"
    printf '%s' "$out"
    return 0
  fi
  if grep -q ParameterNotFound "$err"; then rc=3; else cat "$err" >&2; rc=1; fi
  rm -f "$err"
  return "$rc"
}

# Print the secret stored at PARAMETER, creating it first with a random value
# when it does not exist. Transient API errors are retried; "not found" is
# not. The value goes to the AWS CLI through a private file, never on a
# command line. If another instance created the parameter meanwhile,
# put-parameter fails (no --overwrite) and the stored value wins.
ssm_get_or_create() {
  local param=$1 value rc tmp deadline=$((SECONDS + TALLY_SSM_RETRY_SECONDS)) delay=2
  while :; do
    rc=0
    value=$(ssm_get "$param") || rc=$?
    if ((rc == 0)); then
      printf '%s' "$value"
      return 0
    fi
    ((rc == 3)) && break
    ((SECONDS < deadline)) || die "cannot read SSM parameter $param"
    log "retrying in ${delay}s: read SSM parameter $param"
    sleep "$delay"
    if ((delay < 30)); then delay=$((delay * 2)); fi
  done
  log "SSM parameter $param does not exist: generating it"
  tmp=$(mktemp)
  chmod 0600 "$tmp"
  # Hex: safe inside a database URL and in every config format, no quoting.
  openssl rand -hex 32 | tr -d '\n' >"$tmp"
  if ! aws ssm put-parameter --region "$TALLY_AWS_REGION" --name "$param" --type SecureString \
    --description "Tally secret, generated at first boot" --value "file://$tmp" >/dev/null; then
    log "put-parameter $param failed (created concurrently?): reading the stored value"
  fi
  rm -f "$tmp"
  retry 120 ssm_get "$param" || die "cannot read SSM parameter $param after creating it"
}

write_secrets() {
  local dir=$TALLY_CHECKOUT/secrets name value
  # The directory keeps other host users out. It belongs to uid 10001, the
  # user of the secrets-init job that imports it into the secrets volume; the
  # offsite files stay world-readable because Compose bind-mounts them into
  # the backup sidecar, which runs as another non-root uid.
  install -d -m 0700 -o 10001 -g 10001 "$dir"
  for name in $TALLY_SECRET_NAMES; do
    value=$(ssm_get_or_create "$TALLY_SSM_PREFIX/$name")
    [[ -n $value ]] || die "SSM parameter $TALLY_SSM_PREFIX/$name is empty"
    printf '%s' "$value" >"$dir/$name.new"
    chmod 0644 "$dir/$name.new"
    mv "$dir/$name.new" "$dir/$name"
  done
  if [[ -n ${TALLY_BACKUP_AGE_RECIPIENT:-} ]]; then
    # The offsite overlay (backup/compose.offsite.yaml) mounts both files.
    printf '%s\n' "$TALLY_BACKUP_AGE_RECIPIENT" >"$dir/backup_age_recipient"
    # Filled by write_backup_credentials (the sidecar cannot reach IMDS).
    [[ -e $dir/aws_credentials ]] || printf '# Written by tally-bootstrap from the instance role.\n' >"$dir/aws_credentials"
    chmod 0644 "$dir/backup_age_recipient" "$dir/aws_credentials"
  fi
  log "wrote secrets/ ($TALLY_SECRET_NAMES${TALLY_BACKUP_AGE_RECIPIENT:+ backup_age_recipient aws_credentials})"
}

# .env = the repository's .env.example (the stack's documented defaults)
# without the keys Terraform manages, followed by Terraform's values.
write_dotenv() {
  local target=$TALLY_CHECKOUT/.env tmp managed
  managed=$(sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' "$TALLY_STACK_ENV" | paste -sd '|' -)
  [[ -n $managed ]] || die "$TALLY_STACK_ENV defines no variable"
  tmp=$(mktemp "$TALLY_CHECKOUT/.env.XXXXXX")
  if [[ -f $TALLY_CHECKOUT/.env.example ]]; then
    grep -Ev "^[[:space:]]*(export[[:space:]]+)?($managed)[[:space:]]*=" "$TALLY_CHECKOUT/.env.example" >"$tmp" || true
    printf '\n# --- managed by Terraform (infra/terraform) ---\n' >>"$tmp"
  fi
  cat "$TALLY_STACK_ENV" >>"$tmp"
  chmod 0600 "$tmp"
  mv "$tmp" "$target"
}

# With the pipeline's images (TALLY_IMAGE and TALLY_BACKUP_IMAGE, pinned by
# digest) the server runs exactly the bytes that were scanned and builds
# nothing; without them it builds from the checkout, as a development box.
start_stack() {
  cd "$TALLY_CHECKOUT"
  if grep -Eq "^TALLY_IMAGE='?[^'[:space:]]+@sha256:" "$TALLY_STACK_ENV"; then
    log "running the pipeline's images (pinned by digest); nothing is built here"
    retry 900 docker compose pull --quiet
    docker compose up -d --no-build --remove-orphans
  else
    log "no tally_image set: building the images from the checkout (not scanned by the pipeline)"
    retry 900 docker compose pull --quiet --ignore-buildable
    docker compose up -d --build --remove-orphans
  fi
}

IMDS=${TALLY_IMDS_URL:-http://169.254.169.254}

# The offsite copy's credentials. IMDS answers only the host (hop limit 1),
# so the backup sidecar cannot fetch the instance role's temporary
# credentials itself: they are written into its credentials file, in place
# (Compose bind-mounts the file, a new inode would not be seen), and
# tally-backup-credentials.timer renews them long before they expire.
write_backup_credentials() {
  local file=$TALLY_CHECKOUT/secrets/aws_credentials token role json
  [[ -n ${TALLY_BACKUP_AGE_RECIPIENT:-} ]] || return 0
  token=$(curl -fsS --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token")
  role=$(curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/iam/security-credentials/")
  json=$(curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" \
    "$IMDS/latest/meta-data/iam/security-credentials/${role%%$'\n'*}")
  python3 -c '
import json, sys
c = json.loads(sys.stdin.read())
print("[default]")
print("aws_access_key_id = " + c["AccessKeyId"])
print("aws_secret_access_key = " + c["SecretAccessKey"])
print("aws_session_token = " + c["Token"])
' <<<"$json" >"$file.new"
  [[ -e $file ]] || install -m 0644 /dev/null "$file"
  cat "$file.new" >"$file"
  rm -f "$file.new"
}

install_credentials_timer() {
  [[ -n ${TALLY_BACKUP_AGE_RECIPIENT:-} ]] || return 0
  cat >"$TALLY_SYSTEMD_DIR/tally-backup-credentials.service" <<'UNIT'
[Unit]
Description=Renew the Tally backup sidecar's S3 credentials from the instance role

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/tally-bootstrap backup-credentials
UNIT
  cat >"$TALLY_SYSTEMD_DIR/tally-backup-credentials.timer" <<'UNIT'
[Unit]
Description=Renew the Tally backup sidecar's S3 credentials every 15 minutes

[Timer]
OnBootSec=1min
OnUnitActiveSec=15min

[Install]
WantedBy=timers.target
UNIT
  systemctl daemon-reload
  systemctl enable --now tally-backup-credentials.timer
}

wait_healthy() {
  local url="https://${TALLY_PUBLIC_HOST}/healthz"
  log "waiting for $url"
  # -k: with a fresh domain the certificate may still be Traefik's default
  # while Let's Encrypt is being asked.
  # --connect-to (unlike --resolve) also redirects an IP-literal host.
  retry 900 curl -fsSk --max-time 5 -o /dev/null --connect-to "${TALLY_PUBLIC_HOST}:443:127.0.0.1:443" "$url" ||
    die "$url did not answer: see 'docker compose ps' and 'docker compose logs' in $TALLY_CHECKOUT"
  log "stack is up: $url"
}

main() {
  [[ $EUID -eq 0 ]] || die "run as root"
  # shellcheck source=/dev/null
  . "$TALLY_CONFIG"
  : "${TALLY_REPO_URL:?}" "${TALLY_REPO_REF:?}" "${TALLY_AWS_REGION:?}" "${TALLY_SSM_PREFIX:?}"
  : "${TALLY_SECRET_NAMES:?}" "${TALLY_DATA_VOLUME_ID:?}" "${TALLY_DATA_MOUNT:?}" "${TALLY_PUBLIC_HOST:?}"
  : "${TALLY_INSTALL_SSM_AGENT:?}" "${TALLY_SWAP_MB:?}"
  export AWS_DEFAULT_REGION=$TALLY_AWS_REGION
  umask 022

  mount_data_volume
  ensure_swap
  install_base_packages
  install_ssm_agent
  install_docker
  fetch_repo
  write_secrets
  write_backup_credentials
  install_credentials_timer
  write_dotenv
  start_stack
  wait_healthy
  date -u +%Y-%m-%dT%H:%M:%SZ >/etc/tally/bootstrap.done
}

# Run main only when executed, not when sourced (the tests source it).
if ! (return 0 2>/dev/null); then
  if [[ ${1:-} == backup-credentials ]]; then
    # shellcheck source=/dev/null
    . "$TALLY_CONFIG"
    write_backup_credentials
  else
    main "$@"
  fi
fi
