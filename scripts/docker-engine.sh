# Sourced: a Docker engine of Causeway's own (Debian's dockerd) on its own socket, apart from any
# engine the machine runs: no bridge and no iptables (builds and containers use the host's
# network), overlay2, its data root (images, build cache, volumes) under the given directory.
#
#   source scripts/docker-engine.sh
#   engine_start ~/.cache/causeway-docker   # starts it unless it answers already
#   d ps                                    # Debian's client, on that socket, with BuildKit
#   engine_stop                             # stops it if engine_start started it
#
# Debian's client is called by its full path: a newer client without buildx may come first on
# the PATH.

DOCKER_CLIENT=/usr/bin/docker
ENGINE_STARTED=0

d() { DOCKER_BUILDKIT=1 "$DOCKER_CLIENT" "$@"; }

engine_start() { # data directory
  local dir=$1
  mkdir -p "$dir/data"
  # A unix socket's path must be short: the run directory is under /run.
  ENGINE_RUN=/run/causeway-docker
  mkdir -p "$ENGINE_RUN"
  export DOCKER_HOST="unix://$ENGINE_RUN/docker.sock"
  if d version >/dev/null 2>&1; then
    return 0
  fi
  # A pid file left by an engine that died (this /run may outlive a reboot) names another
  # process by now, and dockerd refuses to start while that one runs.
  if [ -f "$ENGINE_RUN/dockerd.pid" ] &&
    [ "$(cat "/proc/$(cat "$ENGINE_RUN/dockerd.pid")/comm" 2>/dev/null)" != dockerd ]; then
    rm -f "$ENGINE_RUN/dockerd.pid"
  fi
  /usr/sbin/dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 \
    --data-root "$dir/data" --exec-root "$ENGINE_RUN/exec" --pidfile "$ENGINE_RUN/dockerd.pid" \
    -H "$DOCKER_HOST" >"$dir/dockerd.log" 2>&1 &
  ENGINE_STARTED=1
  # Whoever stops the engine later (CI's exit) stops only one that Causeway's scripts started.
  echo "$!" >"$ENGINE_RUN/started-by-causeway"
  for _ in $(seq 150); do
    d version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the Docker engine did not start; its log ($dir/dockerd.log):" >&2
  tail -20 "$dir/dockerd.log" >&2
  return 1
}

engine_stop() { # [any]: stop an engine a Causeway script started, even if not this shell
  local run=/run/causeway-docker pid
  [ "$ENGINE_STARTED" = 1 ] || { [ "${1:-}" = any ] && [ -f "$run/started-by-causeway" ]; } || return 0
  [ -f "$run/dockerd.pid" ] || return 0
  pid=$(cat "$run/dockerd.pid")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || { rm -f "$run/started-by-causeway"; return 0; }
  export DOCKER_HOST="unix://$run/docker.sock"
  # Its containers first (each gets SIGTERM, then SIGKILL): none outlives the engine.
  local running
  running=$(d ps -aq 2>/dev/null || true)
  [ -z "$running" ] || d rm -f $running >/dev/null 2>&1 || true
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$run/started-by-causeway"; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$run/started-by-causeway"
}
