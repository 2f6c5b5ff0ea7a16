#!/usr/bin/env bash
# Build consulspawner's development images without any container registry.
#
#   consulspawner/debian-base:bookworm   debootstrap --variant=minbase + docker import (built once)
#   consulspawner/python-base:<hash12>   + python3, python3-venv, the host's extra CA certificates
#   consulspawner/notebook:<hash12>      + venv with jupyterhub==<host version>, JupyterLab, trino; user jovyan
#   consulspawner/connectproxy:<hash12>  + the package dev/consulspawner_dev/connectproxy/ as `connectproxy` on PATH
#                                        (the one development sidecar: tests, demo, benchmarks)
#
# <hash12> covers every build input (the build context, the build arguments and the parent
# image's ID), so an unchanged image is never rebuilt and a second run takes seconds.
#
# stdout: exactly the three lines below (also written to docker/.images.env); the rest is on stderr.
#   CONSULSPAWNER_NOTEBOOK_IMAGE=consulspawner/notebook:<hash12>
#   CONSULSPAWNER_SIDECAR_IMAGE=consulspawner/connectproxy:<hash12>
#   CONSULSPAWNER_PROXY_IMAGE=consulspawner/connectproxy:<hash12>   (the same image, for older callers)
#
# Options:  --force   rebuild everything (also the Debian base), without Docker's layer cache
# Env:      DEBIAN_MIRROR (default: from the apt sources), JUPYTERHUB_VERSION (default: the host's),
#           CONSULSPAWNER_CACHE_DIR (default /var/cache/consulspawner; holds the build lock)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
SUITE=bookworm
DEBIAN_IMAGE="consulspawner/debian-base:$SUITE"
CACHE_DIR="${CONSULSPAWNER_CACHE_DIR:-/var/cache/consulspawner}"
HOST_CA_DIR=/usr/local/share/ca-certificates
FORCE=0

log() { echo "build-images: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

command -v docker >/dev/null 2>&1 || die "no docker client; run scripts/ensure-docker.sh first"
docker info >/dev/null 2>&1 || die "the docker daemon does not answer; run scripts/ensure-docker.sh first"

# One build at a time on this machine (several checkouts may share the daemon).
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/build-images.lock"
if ! flock -n 9; then
    log "another build-images.sh is running; waiting for it"
    flock -w 1800 9 || die "timed out waiting for the build lock $CACHE_DIR/build-images.lock"
fi

WORK="$(mktemp -d /tmp/consulspawner-build.XXXXXX)"
cleanup() {
    # debootstrap mounts /proc etc. inside the rootfs; never let rm wander into them.
    local mnt
    for mnt in $(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$mnt" 2>/dev/null || true
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }

# The Debian mirror the machine's apt uses for $SUITE (one-line sources.list and deb822 .sources).
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local files=() f mirror
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    mirror=""
    if [ "${#files[@]}" -gt 0 ]; then
        mirror="$(awk -v suite="$SUITE" '
            function flush(   n, i, u) {
                if (is822 && !found && (" " types " ") ~ / deb / && enabled != "no" \
                    && (" " suites " ") ~ (" " suite " ")) {
                    n = split(uris, u, /[ \t]+/)
                    for (i = 1; i <= n; i++) if (u[i] ~ /^https?:\/\//) { print u[i]; found = 1; return }
                }
                types = uris = suites = enabled = key = ""
            }
            FNR == 1 { flush(); is822 = (FILENAME ~ /\.sources$/) }
            found { next }
            is822 && /^[ \t]*#/ { next }
            is822 && /^[ \t]*$/ { flush(); next }
            is822 && /^[ \t]/ { if (key == "uris") uris = uris " " $1; next }
            is822 && /^[A-Za-z-]+:/ {
                key = tolower($0); sub(/:.*/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "enabled") enabled = tolower(val)
                next
            }
            !is822 && $1 == "deb" {
                line = $0; sub(/^[ \t]*deb[ \t]+/, "", line); sub(/^\[[^]]*\][ \t]*/, "", line)
                split(line, w, /[ \t]+/)
                if (w[2] == suite && w[1] ~ /^https?:\/\//) { print w[1]; found = 1 }
            }
            END { flush() }
        ' "${files[@]}" | head -n 1)"
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

# A short content hash of a build context directory plus extra inputs (one per argument).
content_hash() {
    local ctx="$1"
    shift
    {
        (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
        printf '%s\n' "$@"
    } | sha256sum | cut -c1-12
}

# build NAME CONTEXT PARENT [BUILD_ARG=VALUE ...]: prints NAME:<hash12>, building it if needed.
build() {
    local name="$1" ctx="$2" parent="$3"
    shift 3
    local tag a start build_args=()
    tag="$name:$(content_hash "$ctx" "parent=$(image_id "$parent")" "$@")"
    if [ "$FORCE" = 0 ] && image_exists "$tag"; then
        log "$tag is up to date"
    else
        for a in "BASE=$parent" "$@"; do build_args+=(--build-arg "$a"); done
        log "building $tag"
        start=$SECONDS
        # The legacy builder (no buildx here) warns that it is deprecated; it works.
        if [ "$FORCE" = 1 ]; then build_args+=(--no-cache); fi
        docker build "${build_args[@]}" --label "org.consulspawner.image=$name" -t "$tag" "$ctx" >&2 \
            || die "docker build of $tag failed"
        log "built $tag in $((SECONDS - start))s"
    fi
    echo "$tag"
}

# 1. Debian base, from debootstrap.
if [ "$FORCE" = 0 ] && image_exists "$DEBIAN_IMAGE"; then
    log "$DEBIAN_IMAGE exists"
else
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing; run scripts/ensure-docker.sh"
    mirror="$(debian_mirror)"
    log "debootstrap $SUITE from $mirror (about 30 s)"
    start=$SECONDS
    rootfs="$WORK/rootfs"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        die "debootstrap failed (mirror $mirror; set DEBIAN_MIRROR to use another)"
    }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -c . | docker import -c 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >&2
    log "imported $DEBIAN_IMAGE in $((SECONDS - start))s"
fi

# 2. Python base, trusting the host's extra CA certificates.
ctx="$WORK/python-base"
mkdir -p "$ctx/ca-certificates"
cp "$HERE/base/Dockerfile" "$ctx/"
if [ -d "$HOST_CA_DIR" ]; then
    cp -a "$HOST_CA_DIR/." "$ctx/ca-certificates/"
fi
python_base="$(build consulspawner/python-base "$ctx" "$DEBIAN_IMAGE")"

# 3. Notebook, with the host's jupyterhub version.
jh_version="${JUPYTERHUB_VERSION:-}"
if [ -z "$jh_version" ]; then
    jh_version="$(python3 -c 'import jupyterhub; print(jupyterhub.__version__)' 2>/dev/null)" \
        || die "cannot import jupyterhub on the host (pip install -e '.[test]'), or set JUPYTERHUB_VERSION"
fi
ctx="$WORK/notebook"
mkdir -p "$ctx"
cp "$HERE/notebook/Dockerfile" "$HERE/notebook/jupyter_server_config.py" "$HERE/notebook/trino-example.ipynb" "$ctx/"
notebook="$(build consulspawner/notebook "$ctx" "$python_base" "JUPYTERHUB_VERSION=$jh_version")"

# 4. Connect proxy stand-in, the development sidecar (mTLS, intentions; readiness on a unix socket).
#    The package's source only: no __pycache__, so the content hash is that of the code.
ctx="$WORK/connectproxy"
mkdir -p "$ctx"
cp "$HERE/connectproxy/Dockerfile" "$ctx/"
tar -C "$REPO/dev/consulspawner_dev" --exclude=__pycache__ --exclude='*.pyc' -c connectproxy | tar -C "$ctx" -x
proxy="$(build consulspawner/connectproxy "$ctx" "$python_base")"
sidecar="$proxy"

env_file="$HERE/.images.env"
printf 'CONSULSPAWNER_NOTEBOOK_IMAGE=%s\nCONSULSPAWNER_SIDECAR_IMAGE=%s\nCONSULSPAWNER_PROXY_IMAGE=%s\n' \
    "$notebook" "$sidecar" "$proxy" >"$env_file.tmp.$$"
mv "$env_file.tmp.$$" "$env_file"
cat "$env_file"
