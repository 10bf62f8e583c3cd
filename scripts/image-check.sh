#!/usr/bin/env bash
# The container image, built and run by a real Docker engine (Debian's docker.io), as CI does:
#
#   sudo -E env "PATH=$PATH" scripts/image-check.sh          # build the Dockerfile, run it, check it
#   sudo -E env "PATH=$PATH" scripts/image-check.sh --keep   # ... and leave the engine running
#                                                            # (for CAUSEWAY_IMAGE=causeway:ci cluster.sh)
#
# No image registry is reachable here, so the images the Dockerfile names are made locally under
# the same names, once per machine (kept in the engine's data root, ~/.cache/causeway-docker):
# debian:bookworm-slim from `debootstrap --variant=minbase bookworm` off the mirror apt uses,
# and rust:1.95-slim-bookworm from that base plus this machine's Rust toolchain and CA
# certificates (cargo inside the build reaches the registry only through them). The Dockerfile
# stays the one a user builds anywhere. The engine runs on its own socket with no bridge (the
# build and the containers use the host's network) and keeps its build cache between runs, so a
# warm run compiles only the workspace's own crates (a fresh clone's files are all new to it).
# Old images and build cache past a bound are pruned after each build; the disk must have room
# for the cache (about 4 GB).
#
# The check: `docker build` of the Dockerfile; the image run as its own user with a volume for
# its data; an order that completes and one that is compensated, through the REST API; SIGTERM
# and a clean exit; `causeway verify` run from the image on the volume; the data owned by the
# image's user. Needs root (the engine). Prints the image's size and each phase's time.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
if [ "$(id -u)" -ne 0 ]; then
  echo "image-check.sh runs a Docker engine: run it as root (sudo -E $0)" >&2
  exit 2
fi
CACHE="${CAUSEWAY_DOCKER_CACHE:-$HOME/.cache/causeway-docker}"
source scripts/docker-engine.sh
T0=$(date +%s)
phase() { echo "-- $1 ($(($(date +%s) - T0)) s)"; }

# The packages (skipped when present).
if [ ! -x /usr/sbin/dockerd ] || ! command -v debootstrap >/dev/null; then
  phase "installing docker.io and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
fi
FREE_MB=$(df -Pm "$(dirname "$CACHE")" | awk 'NR == 2 { print $4 }')
if [ "${FREE_MB:-0}" -lt 3000 ]; then
  echo "image-check.sh: ${FREE_MB} MB free under $(dirname "$CACHE"); the engine needs about 3 GB more" >&2
  exit 1
fi
engine_start "$CACHE"
ROOT=
cleanup() {
  [ -z "$ROOT" ] || rm -rf "$ROOT"
  d rm -f causeway-ci >/dev/null 2>&1 || true
  [ "$KEEP" -eq 1 ] || engine_stop
}
trap cleanup EXIT

# Docker's instructions in the Dockerfile must work offline: a `# syntax=` line would have
# BuildKit fetch a frontend image.
if grep -q '^# *syntax=' Dockerfile; then
  echo "Dockerfile: a '# syntax=' line makes BuildKit fetch its frontend from a registry" >&2
  exit 1
fi
mapfile -t BASES < <(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | sort -u)
[ "${#BASES[@]}" -eq 2 ] || { echo "Dockerfile: expected two base images, found ${BASES[*]}" >&2; exit 1; }
SLIM=debian:bookworm-slim
RUST=$(printf '%s\n' "${BASES[@]}" | grep '^rust:')
printf '%s\n' "${BASES[@]}" | grep -qx "$SLIM" || { echo "Dockerfile: the runtime base is not $SLIM" >&2; exit 1; }

# The local stand-ins of the official base images, made once (again when this recipe changes).
# The recipe's version, and the toolchain's: a new one of either makes the images again.
TAG_VERSION=$(echo "$RUST" | sed -n 's/^rust:\([0-9][0-9.]*\)-.*/\1/p')
TOOLCHAIN=$(rustc --print sysroot)
RUSTC_VERSION=$("$TOOLCHAIN/bin/rustc" --version | cut -d' ' -f2)
case "$RUSTC_VERSION" in
  "$TAG_VERSION" | "$TAG_VERSION".*) ;;
  *) echo "the Dockerfile builds with $RUST; this machine's rustc is $RUSTC_VERSION" >&2; exit 1 ;;
esac
RECIPE="3-rust-$RUSTC_VERSION"
made() { [ "$(d image inspect -f '{{index .Config.Labels "causeway.base"}}' "$1" 2>/dev/null)" = "$RECIPE" ]; }
if ! made "$SLIM" || ! made "$RUST"; then
  phase "making the base images $SLIM and $RUST"
  MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  ROOT=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # The mirror may be a snapshot whose Release files are past their Valid-Until (as this
  # machine's apt is told to accept it); and the settings of the official slim images
  # (debuerreotype's): no APT caches or translations, no documentation, manual pages or locales.
  cp /etc/apt/apt.conf.d/99artifact-registry "$ROOT/etc/apt/apt.conf.d/" 2>/dev/null || true
  printf 'Acquire::Languages "none";\n' >"$ROOT/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Acquire::GzipIndexes "true";\n' >"$ROOT/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
    'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >"$ROOT/etc/apt/apt.conf.d/docker-clean"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    >"$ROOT/etc/dpkg/dpkg.cfg.d/docker"
  find "$ROOT/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/var/cache/apt/*.bin
  find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
  # The suites the official image has (updates and security too), from the mirrors apt uses.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    rm -f "$ROOT/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$ROOT/etc/apt/sources.list.d/"
  fi
  tar -C "$ROOT" --numeric-owner -c . |
    d import --change 'CMD ["bash"]' --change "LABEL causeway.base=$RECIPE" --message "debootstrap --variant=minbase bookworm" - "$SLIM" >/dev/null
  # The builder: the same tree with the machine's toolchain where the official image has it.
  mkdir -p "$ROOT/usr/local/rust" "$ROOT/usr/local/cargo/bin" "$ROOT/usr/local/rustup"
  cp -a "$TOOLCHAIN"/{bin,lib,libexec,etc} "$ROOT/usr/local/rust/"
  for tool in "$ROOT"/usr/local/rust/bin/*; do
    ln -s "../../rust/bin/$(basename "$tool")" "$ROOT/usr/local/cargo/bin/$(basename "$tool")"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt" 2>/dev/null ||
    { mkdir -p "$ROOT/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"; }
  tar -C "$ROOT" --numeric-owner -c . |
    d import \
      --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
      --change 'ENV CARGO_HOME=/usr/local/cargo' \
      --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      --change "LABEL causeway.base=$RECIPE" \
      --message "$SLIM with this machine's Rust toolchain ($("$TOOLCHAIN/bin/rustc" --version))" \
      - "$RUST" >/dev/null
  rm -rf "$ROOT"
  ROOT=
fi

phase "docker build"
if ! d build --network host -t causeway:ci . >"$CACHE/build.log" 2>&1; then
  tail -40 "$CACHE/build.log" >&2
  exit 1
fi
SIZE=$(d image inspect -f '{{.Size}}' causeway:ci)
# What the last build replaced, and build cache past a bound (the newest is kept: the cargo
# caches the next build starts from).
d image prune -f >/dev/null
d builder prune -f --keep-storage 3GB >/dev/null

phase "running the image"
NAME=causeway-ci
VOLUME=causeway-ci-data
d rm -f "$NAME" >/dev/null 2>&1 || true
d volume rm "$VOLUME" >/dev/null 2>&1 || true
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
H="http://127.0.0.1:$PORT"
# As the image says (its user, its data directory, `serve`); only the listen address is
# changed, to a free loopback port (there is no bridge: the container shares the host's network).
d run -d --name "$NAME" --network host -v "$VOLUME:/data" -e "CAUSEWAY_LISTEN=127.0.0.1:$PORT" causeway:ci >/dev/null
fail() {
  echo "image check: $1" >&2
  d logs --tail 30 "$NAME" >&2 || true
  exit 1 # the trap removes the container
}
for _ in $(seq 600); do
  curl -sf "$H/readyz" >/dev/null && break
  [ "$(d inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "the container exited before it was ready"
  sleep 0.1
done
curl -sf "$H/readyz" >/dev/null || fail "not ready within 60 s"
# The node's own process, as the host sees it.
[ "$(d top "$NAME" -o pid,uid,comm | awk '$3 == "causeway" { print $2 }')" = 10001 ] ||
  fail "the node does not run as the image's user (10001): $(d top "$NAME" -o pid,uid,comm | tr '\n' ' ')"
post() { curl -sf -X POST "$H$1" -H 'content-type: application/json' -H "Idempotency-Key: $2" -d "$3"; }
ADDR='{"line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}'
post /api/products/SKU-1/stock stock '{"quantity": 3}' >/dev/null || fail "adding stock failed"
ok=$(post /api/orders ok "{\"customer_id\":\"ci\",\"items\":[{\"sku\":\"SKU-1\",\"quantity\":1,\"unit_price_minor\":1500}],\"currency\":\"EUR\",\"shipping_address\":$ADDR}" | jq -r .order_id)
short=$(post /api/orders short "{\"customer_id\":\"ci\",\"items\":[{\"sku\":\"SKU-1\",\"quantity\":9,\"unit_price_minor\":1500}],\"currency\":\"EUR\",\"shipping_address\":$ADDR}" | jq -r .order_id)
until_status() { # id status
  for _ in $(seq 600); do
    [ "$(curl -sf "$H/api/sagas/$1" | jq -r .status)" = "$2" ] && return 0
    sleep 0.1
  done
  fail "saga $1 never reached $2"
}
until_status "$ok" completed
until_status "$short" compensated
echo "orders: $ok completed, $short compensated (out of stock)"

phase "SIGTERM"
d kill -s TERM "$NAME" >/dev/null
CODE=$(timeout 60 /usr/bin/docker wait "$NAME") || fail "did not stop within 60 s of SIGTERM"
[ "$CODE" = 0 ] || fail "exited with $CODE after SIGTERM"
phase "causeway verify, from the image, on the volume"
d run --rm --network none -v "$VOLUME:/data" causeway:ci verify --data-dir /data | tee "$CACHE/verify.log"
grep -q '^OK' "$CACHE/verify.log" || fail "verify did not say OK"
OWNERS=$(d run --rm --network none --entrypoint /usr/bin/find -v "$VOLUME:/data" causeway:ci /data -not -user 10001)
[ -z "$OWNERS" ] || fail "files in the volume not owned by the image's user: $OWNERS"
d rm -f "$NAME" >/dev/null
d volume rm "$VOLUME" >/dev/null
echo "image causeway:ci: $((SIZE / 1024 / 1024)) MiB, built and checked in $(($(date +%s) - T0)) s"
