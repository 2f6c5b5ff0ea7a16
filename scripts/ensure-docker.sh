#!/usr/bin/env bash
# Make sure a Docker daemon answers on this machine (Debian bookworm, root, no systemd).
#
# Idempotent: installs docker.io/debootstrap only when missing, starts dockerd only when
# `docker info` does not answer. Safe to run any number of times.
#
# Environment:
#   DOCKER_DATA_ROOT        (default /var/lib/docker)
#   DOCKERD_LOG             (default /var/log/consulspawner-dockerd.log)
#   DOCKERD_START_TIMEOUT   seconds to wait for the daemon (default 60)
set -euo pipefail

DATA_ROOT="${DOCKER_DATA_ROOT:-/var/lib/docker}"
LOG="${DOCKERD_LOG:-/var/log/consulspawner-dockerd.log}"
DEADLINE_S="${DOCKERD_START_TIMEOUT:-60}"

log() { echo "ensure-docker: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    log "installing: $*"
    as_root apt-get update -q >&2
    as_root apt-get install -y -q --no-install-recommends "$@" >&2
}

docker_answers() { docker info >/dev/null 2>&1; }

# dockerd lives in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

# 1. packages
if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io debootstrap
elif ! command -v debootstrap >/dev/null 2>&1; then
    apt_install debootstrap
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd still missing after installing docker.io"
command -v docker >/dev/null 2>&1 || die "docker client missing after installing docker.io"

# 2. daemon
if docker_answers; then
    log "docker daemon already answers"
    exit 0
fi

if pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd is running but not answering yet; waiting for it"
else
    log "starting dockerd (data root $DATA_ROOT, log $LOG)"
    as_root mkdir -p "$DATA_ROOT" "$(dirname "$LOG")"
    # setsid + nohup: the daemon must outlive this script and its session.
    as_root setsid nohup dockerd --data-root "$DATA_ROOT" >"$LOG" 2>&1 </dev/null &
    disown || true
fi

start=$SECONDS
delay=0.1
until docker_answers; do
    if (( SECONDS - start >= DEADLINE_S )); then
        log "docker daemon did not answer within ${DEADLINE_S}s; last lines of $LOG:"
        tail -n 40 "$LOG" >&2 2>/dev/null || true
        die "docker daemon is not available"
    fi
    sleep "$delay"
    # back off gently: 0.1, 0.2, 0.4, ... capped at 2 s
    delay=$(awk -v d="$delay" 'BEGIN { d *= 2; if (d > 2) d = 2; print d }')
done
log "docker daemon answers after $(( SECONDS - start ))s"
