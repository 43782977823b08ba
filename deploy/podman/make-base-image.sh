#!/usr/bin/env bash
# Build a local Debian bookworm base image with debootstrap + `podman import`, for hosts that can
# reach Debian's mirror and PyPI but no container registry.
#
#   deploy/podman/make-base-image.sh [IMAGE]      (default localhost/tapeserve-base:bookworm)
#
# The image is a minbase bookworm (no Python: the Dockerfile installs it). The host's CA bundle
# is copied in as /etc/ssl/certs/host-ca-bundle.crt and /etc/pip.conf points pip at it, so builds
# work behind a TLS-intercepting proxy that only the host trusts. Nothing else from the host
# (pip indexes, credentials) goes in. An image that already exists is kept (cache in the podman
# store); set REBUILD=1 to make it again.
set -euo pipefail

IMAGE="${1:-localhost/tapeserve-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
HOST_CA="${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}"

if [[ "${REBUILD:-0}" != 1 ]] && podman image exists "$IMAGE"; then
  echo "base image $IMAGE exists (REBUILD=1 to make it again)"
  exit 0
fi
for tool in debootstrap podman tar; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 2; }
done
[[ -r "$HOST_CA" ]] || { echo "error: CA bundle $HOST_CA is not readable" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tapeserve-base.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"

echo "debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORK/debootstrap.log" >&2
  exit 1
}

install -D -m 0644 "$HOST_CA" "$ROOT/etc/ssl/certs/host-ca-bundle.crt"
printf '[global]\ncert = /etc/ssl/certs/host-ca-bundle.crt\n' >"$ROOT/etc/pip.conf"
# Keep the image small: no apt lists, caches, docs or man pages.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
  "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*

tar --numeric-owner -C "$ROOT" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt' \
  --change 'CMD ["/bin/bash"]' \
  - "$IMAGE"
echo "made base image $IMAGE"
