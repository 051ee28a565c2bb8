#!/usr/bin/env bash
# Installs the system tools the test suite runs for real (Debian 12, as root). Idempotent: a
# package already present is not fetched again, so `make test` can call it every time.
# When it installs anything, it then stops the services those packages start (PostgreSQL,
# Prometheus, Alertmanager, exporters), a system PostgreSQL of yours included: it says so first.
set -euo pipefail

APT_PACKAGES=(
  make python3.11 python3.11-venv python3-venv ca-certificates
  postgresql-15 postgresql-client-15
  prometheus prometheus-alertmanager prometheus-postgres-exporter prometheus-node-exporter
  prometheus-blackbox-exporter
  shellcheck chromium fonts-dejavu-core
  containerd runc tini iptables debootstrap
  wrk age socat rsync jq curl iproute2 git openssl
  python3-croniter
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-test-deps: missing Debian packages: ${missing[*]} (run this script as root)" >&2
    exit 1
  fi
  echo "install-test-deps: installing ${missing[*]}"
  echo "install-test-deps: NOTE: afterwards this stops the system's PostgreSQL, Prometheus, Alertmanager" \
       "and exporter services (the tests start their own on free ports); start yours again with systemctl start"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The Debian packages start their services; the tests start their own on free ports instead.
  for service in containerd prometheus prometheus-alertmanager prometheus-postgres-exporter prometheus-node-exporter \
                 prometheus-blackbox-exporter postgresql; do
    systemctl stop "$service" 2>/dev/null || service "$service" stop 2>/dev/null || true
  done
fi
echo "install-test-deps: system packages present"
# The Docker Engine of the end-to-end suite (tests/e2e), unpacked beside the system, never installed into it.
"$(dirname "$0")/install-docker-engine.sh"
