# Tally production image: gunicorn serving app:create_app() as an unprivileged user.
#
# Base image: the official slim Python image, pinned by exact version tag, not by digest: tests/container
# builds a local stand-in tagged with exactly this reference, and no registry is reachable from where this
# file is built and tested, so a recorded digest could never be checked (docs/security.md, supply chain).
# To build on an exact digest anyway, look it up and pass it:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm --format '{{.Manifest.Digest}}'
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# checkov:skip=CKV_DOCKER_7: the base is pinned to an exact version through PYTHON_IMAGE above, which checkov cannot expand (tests/stack/test_dockerfile.py checks the pin)

# ---------------------------------------------------------------------------------------------------------
# builder: installs the locked dependencies into a virtualenv that the runtime stage copies as a whole.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
COPY requirements.lock ./
# --no-deps: exactly the pinned set, nothing resolved at build time; --only-binary: no sdist is ever
# compiled, so no compiler is needed here either and a dependency without a wheel fails the build loudly.
# --require-hashes: every file must match a sha256 in the lock, so a swapped upload on the index fails.
# pip check proves the pinned set is complete and consistent.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --only-binary=:all: --require-hashes --requirement requirements.lock \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---------------------------------------------------------------------------------------------------------
# runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
# VERSION must equal version.txt when given (checked below); BUILD_NUMBER and GIT_COMMIT are shown by /version.
ARG VERSION=""
ARG BUILD_NUMBER=""
ARG GIT_COMMIT=""
# The repository the image is built from: CI passes its project URL.
ARG SOURCE_URL=""

LABEL org.opencontainers.image.title="tally" \
      org.opencontainers.image.description="Tally visitor counter (Flask + gunicorn)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      org.opencontainers.image.licenses="MIT" \
      io.tally.build-number="${BUILD_NUMBER}"

# The root filesystem is read-only in compose: no bytecode writes, and the multiprocess metrics directory
# and the drain file (scripts/deploy.sh) live on the /tmp tmpfs, which a restart empties. Outside a container the app binds loopback by default; inside, every interface
# of the container's own network namespace (Docker's networks and published ports decide the exposure).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TALLY_ENV=production \
    BIND_ADDRESS=0.0.0.0 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/tally-metrics \
    DRAIN_MARKER=/tmp/tally-draining \
    BUILD_NUMBER=${BUILD_NUMBER} \
    GIT_COMMIT=${GIT_COMMIT}

# A fixed uid/gid so volume and secret file permissions can be reasoned about outside the image.
# /srv/secrets-volume is where the secrets-init job mounts the `secrets` volume: Docker gives a new, empty
# named volume the owner and mode of the image directory it is mounted over, so the job (this uid, no
# capabilities) can write the secret files, and nobody else can list them.
RUN groupadd --system --gid 10001 tally \
    && useradd --system --no-log-init --uid 10001 --gid tally --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin tally \
    && install -d -o 10001 -g 10001 -m 0700 /srv/secrets-volume

COPY --from=builder /opt/venv /opt/venv
# The secrets-init job's logic (compose/app.yaml); root-owned like the code, standard library only.
COPY scripts/secrets_init.py /opt/tally/secrets_init.py

WORKDIR /srv/tally
# Code stays root-owned: the app user can read it but never modify it, even without read_only.
COPY gunicorn.conf.py version.txt ./
COPY app/ ./app/
RUN if [ -n "${VERSION}" ] && [ "${VERSION}" != "$(cat version.txt)" ]; then \
        echo "VERSION build arg '${VERSION}' does not match version.txt '$(cat version.txt)'" >&2; exit 1; \
    fi \
    && python -m compileall -q app

USER 10001:10001

EXPOSE 8000 9200

# Liveness only (no database): the container is healthy when gunicorn answers. Readiness (/readyz) is what
# Traefik's load-balancer health check uses. slim has no curl, hence python.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]

# gunicorn is PID 1 (exec form, no shell): SIGTERM reaches the master, which serves on for SHUTDOWN_DELAY
# (5 s by default), then stops accepting and lets in-flight requests finish within GUNICORN_GRACEFUL_TIMEOUT
# (20 s): 25 s < compose stop_grace_period (30 s).
STOPSIGNAL SIGTERM
CMD ["gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]
