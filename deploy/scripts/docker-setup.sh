#!/usr/bin/env bash
# Make this machine able to build and run the pscluster containers with no registry reachable:
#   1. the Docker engine (Debian's docker.io) and a running dockerd
#   2. the compose v2 CLI plugin (`docker compose`)
#   3. a local base image, pscluster-base:bookworm, made from Debian packages (debootstrap)
#   4. the wheels of pscluster's runtime dependencies in deploy/wheels/
#   5. .env at the repository root, which compose reads by itself: it makes every build here
#      offline, so `docker compose up -d --build` works as written (and make, and the tests)
# Every step is skipped when its result is already there, so CI runs on the same machine reuse
# them; `make test` runs this before pytest. Steps 1-3 need root (CI runs as root).
#
#   deploy/scripts/docker-setup.sh            # everything above
#   PYTHON=path/to/python3.11 deploy/scripts/docker-setup.sh
#
# The package mirror is read from this machine's apt sources; none is written into the repo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BASE_IMAGE=pscluster-base:bookworm
SUITE=bookworm
WHEELS=$ROOT/deploy/wheels
ENV_FILE=$ROOT/.env
ENV_MARKER="# Written by deploy/scripts/docker-setup.sh"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/pscluster-dockerd.log}
APT_SOURCES=/etc/apt/sources.list.d/debian.sources
TRIXIE_SOURCES=/etc/apt/sources.list.d/pscluster-trixie.sources
TRIXIE_PIN=/etc/apt/preferences.d/pscluster-trixie
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
export DEBIAN_FRONTEND=noninteractive

say() { printf 'docker-setup: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (CI runs as root); run: sudo $0"; }

APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
}

apt_install() {
    need_root "installing $*"
    apt_update
    apt-get install -y -qq --no-install-recommends "$@" > /dev/null
}

# The first URIs of the Debian sources: the mirror this machine is configured to use.
debian_mirror() {
    local uri=""
    if [ -f "$APT_SOURCES" ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' "$APT_SOURCES")
    elif [ -f /etc/apt/sources.list ]; then
        uri=$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "found no Debian mirror in $APT_SOURCES or /etc/apt/sources.list"
    printf '%s\n' "$uri"
}

# --- 1. the engine --------------------------------------------------------------------------
install_engine() {
    if command -v dockerd > /dev/null && command -v docker > /dev/null; then
        return
    fi
    say "installing the Docker engine (docker.io)"
    apt_install docker.io
}

start_engine() {
    if docker info > /dev/null 2>&1; then
        return
    fi
    need_root "starting dockerd"
    # Flags for this sandbox (no systemd, so dockerd is started here):
    # - storage: the root filesystem is ext4 and the kernel has overlayfs, so overlay2 works;
    #   where overlay is missing (e.g. inside another container's overlay root) vfs is the
    #   fallback: slow full copies, but it works everywhere.
    # - iptables stays on: internal networks and published ports are iptables rules; Debian's
    #   iptables uses the nf_tables backend, which this kernel has.
    # - cgroups: v1 controllers are mounted and there is no systemd, so dockerd's default
    #   cgroupfs driver is the right one; nothing to set.
    local driver=overlay2
    grep -qw overlay /proc/filesystems || driver=vfs
    say "starting dockerd (storage driver $driver, log $DOCKERD_LOG)"
    nohup dockerd --storage-driver="$driver" >> "$DOCKERD_LOG" 2>&1 < /dev/null &
    local deadline=$((SECONDS + 60))
    until docker info > /dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within 60 s (log above: $DOCKERD_LOG)"
        fi
        sleep 1
    done
}

# --- 2. compose v2 ----------------------------------------------------------------------------
# Debian bookworm only packages compose v1; trixie's docker-compose (2.26) is the v2 plugin, a
# Go binary that runs on bookworm. The trixie suite is added at priority 100 so that nothing
# else is ever upgraded from it; only this one .deb is downloaded and unpacked, not installed.
install_compose() {
    if docker compose version > /dev/null 2>&1; then
        return
    fi
    need_root "installing the compose plugin"
    say "installing the compose v2 plugin from Debian trixie's docker-compose package"
    local mirror
    mirror=$(debian_mirror)
    if [ ! -f "$TRIXIE_SOURCES" ]; then
        printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
            "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg > "$TRIXIE_SOURCES"
        APT_UPDATED=0
    fi
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > "$TRIXIE_PIN"
    apt_update
    local tmp
    tmp=$(mktemp -d)
    chmod 0777 "$tmp"  # apt downloads as the _apt user
    (cd "$tmp" && apt-get download -qq docker-compose/trixie)
    dpkg -x "$tmp"/docker-compose_*.deb "$tmp/x"
    mkdir -p "$PLUGIN_DIR"
    install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN_DIR/"
    rm -rf "$tmp"
    docker compose version > /dev/null || die "docker compose does not run after installing it"
}

# --- 3. the base image ------------------------------------------------------------------------
# What python:3.11-slim gives an online build: Debian with python3 (3.11 in bookworm, matching
# the wheels) and venv support; made here from the mirror since no registry can be pulled from.
make_base_image() {
    if docker image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
        return
    fi
    need_root "debootstrap"
    command -v debootstrap > /dev/null || apt_install debootstrap
    local mirror rootfs
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d)
    say "making $BASE_IMAGE with debootstrap (about a minute)"
    if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" > "$rootfs.log" 2>&1; then
        tail -n 20 "$rootfs.log" >&2
        rm -rf "$rootfs"
        die "debootstrap failed (log above)"
    fi
    # Package caches and manuals are not needed in an image; the mirror address stays out of it.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/man/* "$rootfs"/etc/apt/sources.list "$rootfs.log"
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" > /dev/null
    rm -rf "$rootfs"
}

# --- 4. the wheels ----------------------------------------------------------------------------
# For CPython 3.11 on x86_64 with glibc <= 2.36 (bookworm): every manylinux tag up to 2_36.
wheel_requirements() {
    cat "$ROOT/requirements/cpu.txt"
    "$PYTHON" "$ROOT/deploy/scripts/runtime_requirements.py" "$ROOT/pyproject.toml"
    # pscluster itself is built inside the image from source: its build backend too (pyproject).
    "$PYTHON" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$ROOT/pyproject.toml"
}

download_wheels() {
    [ -x "$PYTHON" ] || die "$PYTHON not found: run \`make install\` first or set PYTHON"
    local reqs stamp
    reqs=$(wheel_requirements)
    stamp=$(printf '%s\ncp311 x86_64 manylinux_2_36\n' "$reqs" | sha256sum | cut -d' ' -f1)
    if [ -f "$WHEELS/.stamp" ] && [ "$(cat "$WHEELS/.stamp")" = "$stamp" ] \
        && compgen -G "$WHEELS/torch-*.whl" > /dev/null; then
        return
    fi
    say "downloading wheels into deploy/wheels/"
    rm -f "$WHEELS"/*.whl "$WHEELS/.stamp"
    local platforms=() n
    for n in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    platforms+=(--platform manylinux2014_x86_64)
    local log
    log=$(mktemp)
    printf '%s\n' "$reqs" > "$log.txt"
    # Quiet unless it fails: pip warns about every configured index location it skips.
    if ! "$PYTHON" -m pip download -q --disable-pip-version-check --only-binary=:all: \
        --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
        -d "$WHEELS" -r "$log.txt" > "$log" 2>&1; then
        grep -v 'is ignored' "$log" >&2 || true
        rm -f "$log" "$log.txt"
        die "pip download failed (output above)"
    fi
    rm -f "$log" "$log.txt"
    printf '%s\n' "$stamp" > "$WHEELS/.stamp"
}

# --- 5. the offline build settings -----------------------------------------------------------
# compose reads .env beside compose.yaml for ${...} in it (not for the containers' environment).
write_env_file() {
    local settings
    settings=$(printf 'PSC_BASE_IMAGE=%s\nPSC_INSTALL_FROM=wheels\n' "$BASE_IMAGE")
    if [ -f "$ENV_FILE" ] && [[ "$(head -n 1 "$ENV_FILE")" != "$ENV_MARKER"* ]]; then
        say "WARNING: $ENV_FILE is not ours, so it is left alone; for offline builds add:"
        printf '%s\n' "$settings" >&2
        return
    fi
    printf '%s: build the images offline here\n%s\n' "$ENV_MARKER" "$settings" > "$ENV_FILE"
}

main() {
    install_engine
    start_engine
    install_compose
    make_base_image
    download_wheels
    write_env_file
    say "ready: $(docker compose version --short 2>/dev/null || echo '?') compose, engine \
$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'), base $BASE_IMAGE"
}

main "$@"
