#!/usr/bin/env bash
# Prints (as the last line on stdout) the name of a Redis image that exists in the
# local Docker engine and can be used by the tests, building one if needed.
#
#   1. $FREDLOCK_REDIS_IMAGE, if set (must exist locally or be pullable).
#   2. The official redis:7.4, if present locally or pullable.
#   3. fredlock/redis:local, built (once) from Debian's redis-server package with
#      `docker import`; needs no registry.
#
# Everything except the image name goes to stderr.
# Usage: FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh) cargo test
set -euo pipefail

log() { printf 'redis-image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

try_pull() {
    log "pulling $1 (timeout 120 s)"
    timeout 120 docker pull "$1" >&2 2>&1
}

# 1. Explicit choice.
if [[ -n "${FREDLOCK_REDIS_IMAGE:-}" ]]; then
    img="$FREDLOCK_REDIS_IMAGE"
    if have_image "$img"; then
        log "using $img (FREDLOCK_REDIS_IMAGE, present locally)"
    elif try_pull "$img"; then
        log "using $img (FREDLOCK_REDIS_IMAGE, pulled)"
    else
        die "FREDLOCK_REDIS_IMAGE=$img is neither present locally nor pullable"
    fi
    echo "$img"
    exit 0
fi

# 2. The official image.
official="redis:7.4"
if have_image "$official"; then
    log "using $official (present locally)"
    echo "$official"
    exit 0
fi
if try_pull "$official"; then
    log "using $official (pulled)"
    echo "$official"
    exit 0
fi
log "$official is not available; falling back to a locally built image"

# 3. A minimal image made from Debian's redis-server package.
local_img="fredlock/redis:local"
if have_image "$local_img"; then
    log "using $local_img (already built)"
    echo "$local_img"
    exit 0
fi

if [[ ! -x /usr/bin/redis-server || ! -x /usr/bin/redis-cli ]]; then
    log "installing Debian's redis-server package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends redis-server >&2
    # The package starts a service on Debian; it is not needed here, but leave the
    # host as the package left it.
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

copy_with_path() {
    # copy_with_path SRC DEST_PATH: copy following symlinks, keeping DEST_PATH.
    mkdir -p "$rootfs$(dirname "$2")"
    cp -L "$1" "$rootfs$2"
}

copy_with_path /usr/bin/redis-server /usr/bin/redis-server
copy_with_path /usr/bin/redis-cli /usr/bin/redis-cli

# Every shared library of both binaries, plus the dynamic loader (the line with a
# path and no "=>"). `cp -L` so that symlinked sonames become real files at the
# path the loader asks for.
mapfile -t libs < <(
    for bin in /usr/bin/redis-server /usr/bin/redis-cli; do
        ldd "$bin"
    done | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }' \
        | sort -u
)
[[ ${#libs[@]} -gt 0 ]] || die "ldd listed no libraries for redis-server"
for lib in "${libs[@]}"; do
    copy_with_path "$lib" "$lib"
    log "  + $lib"
done

mkdir -p "$rootfs/tmp" "$rootfs/data"
chmod 1777 "$rootfs/tmp"

log "importing $local_img"
tar -C "$rootfs" -c . \
    | docker import \
        -c 'ENTRYPOINT ["/usr/bin/redis-server"]' \
        -c 'WORKDIR /data' \
        - "$local_img" >&2
have_image "$local_img" || die "docker import did not produce $local_img"
log "built $local_img"
echo "$local_img"
