#!/usr/bin/env bash
# Offline checks of everything under deploy/ that is not Rust, plus the Dockerfile and the
# GitHub workflow. Needs python3 (3.10+), kubectl (with its built-in kustomize) and nats-server
# (installed with apt-get when missing and running as root). Python tools come from PyPI into a
# venv under .run/ (pinned in deploy/check/requirements.txt).
#
#   bash deploy/check/run.sh              every check, then the checker's self-test
#   bash deploy/check/run.sh --self-test  only the self-test: each deploy/check/broken/*.yaml
#                                         must be caught
#
# What it checks:
#   1. renders deploy/k8s/overlays/{dev,prod}, deploy/istio and deploy/istio/overlays/breaker-demo;
#   2. every core resource against the Kubernetes schemas (kubernetes-validate --strict), every
#      Istio resource through cloudcoil-models-istio (unknown fields are findings), and the
#      platform's own rules (deploy/check/check.py);
#   3. deploy/nats/*.conf with `nats-server -t`, and the per-service NATS permissions against a
#      real nats-server on a spare loopback port (deploy/check/nats_permissions.py);
#   4. hadolint on Dockerfile, actionlint (with shellcheck) on .github/workflows/ci.yml,
#      and shellcheck on this script.
# Exit status 1 on any finding. Every step runs even when an earlier one failed.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/../.."
ROOT=$PWD
CHECK=deploy/check
K8S_VERSION=1.30.0
# Secrets production creates itself (deploy/k8s/README.md); the dev overlay generates them.
EXTERNAL_SECRETS=saga-postgres,saga-mariadb,saga-nats-auth,saga-telegram,saga-api-tokens

mode=all
case "${1:-}" in
  "") ;;
  --self-test) mode=self-test ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

started=$(date +%s)
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
failed=()
step() { # step NAME COMMAND...: runs the command, records a failure, never stops the run
  local name=$1; shift
  say "$name"
  if ! "$@"; then failed+=("$name"); fi
}

# --- tools -------------------------------------------------------------------------------------
VENV=${DEPLOY_CHECK_VENV:-$ROOT/.run/deploy-check-venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
want=$(sha256sum "$CHECK/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
  say "installing $CHECK/requirements.txt"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$CHECK/requirements.txt"
  echo "$want" >"$VENV/.requirements.sha256"
fi
export PATH="$VENV/bin:$PATH"
command -v kubectl >/dev/null || { echo "kubectl is needed (it renders the kustomizations)" >&2; exit 1; }

OUT=$(mktemp -d)
NATS_PID=""
cleanup() {
  if [ -n "$NATS_PID" ]; then kill "$NATS_PID" 2>/dev/null || true; wait "$NATS_PID" 2>/dev/null || true; fi
  rm -rf "$OUT"
}
trap cleanup EXIT

render() { # render DIR FILE
  kubectl kustomize "$1" >"$OUT/$2"
}
render_all() {
  render deploy/k8s/overlays/dev dev.yaml \
    && render deploy/k8s/overlays/prod prod.yaml \
    && render deploy/istio istio.yaml \
    && render deploy/istio/overlays/breaker-demo breaker-demo.yaml
}

self_test() {
  python "$CHECK/check.py" --k8s-version "$K8S_VERSION" self-test \
    --context "$OUT/dev.yaml,$OUT/istio.yaml" --broken-dir "$CHECK/broken"
}

if [ "$mode" = self-test ]; then
  render_all
  step "self-test: the checker catches every broken case" self_test
  [ ${#failed[@]} -eq 0 ] || exit 1
  exit 0
fi

# --- manifests ---------------------------------------------------------------------------------
step "render the kustomizations" render_all
manifests() {
  python "$CHECK/check.py" --k8s-version "$K8S_VERSION" manifests \
    --bundle dev "$OUT/dev.yaml,$OUT/istio.yaml" \
    --bundle prod "$OUT/prod.yaml,$OUT/istio.yaml" \
    --bundle breaker-demo "$OUT/dev.yaml,$OUT/breaker-demo.yaml" \
    --external-secrets "$EXTERNAL_SECRETS"
}
step "schemas (Kubernetes $K8S_VERSION strict, Istio models) and the platform's rules" manifests

# --- NATS --------------------------------------------------------------------------------------
ensure_nats_server() {
  command -v nats-server >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing nats-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "nats-server is needed: apt-get install nats-server" >&2
    return 1
  fi
}
nats_env() {
  local user
  for user in ORCHESTRATOR MISSION REWARD TELEGRAM WALLET GIFT MYPAGE OBSERVER; do
    export "NATS_${user}_PASSWORD=check-${user,,}-$RANDOM$RANDOM"
  done
  export POD_NAME=nats-0
}
nats_config() {
  ensure_nats_server || return 1
  nats_env
  nats-server -t -c deploy/nats/nats-server.conf && nats-server -t -c deploy/nats/cluster.conf
}
nats_permissions() {
  command -v nats-server >/dev/null || return 1
  nats_env
  local port
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$OUT/nats"
  nats-server -c deploy/nats/nats-server.conf -a 127.0.0.1 -p "$port" -sd "$OUT/nats" \
    -l "$OUT/nats/server.log" &
  NATS_PID=$!
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  local rc=0
  python "$CHECK/nats_permissions.py" "nats://127.0.0.1:$port" || rc=$?
  kill "$NATS_PID" && wait "$NATS_PID" 2>/dev/null || true
  NATS_PID=""
  return "$rc"
}
step "nats-server -t on deploy/nats/nats-server.conf and cluster.conf" nats_config
step "NATS users and permissions against a real nats-server" nats_permissions

# --- Dockerfile, workflow, this script ---------------------------------------------------------
dockerfile() {
  if [ -f .hadolint.yaml ]; then hadolint --config .hadolint.yaml Dockerfile; else hadolint Dockerfile; fi \
    && echo "Dockerfile: 0 findings"
}
workflow() {
  actionlint .github/workflows/ci.yml && echo ".github/workflows/ci.yml: 0 findings"
}
scripts() {
  shellcheck "$CHECK/run.sh" && echo "$CHECK/run.sh: 0 findings"
}
step "hadolint Dockerfile" dockerfile
step "actionlint .github/workflows/ci.yml" workflow
step "shellcheck deploy/check/run.sh" scripts

step "self-test: the checker catches every broken case" self_test

elapsed=$(( $(date +%s) - started ))
if [ ${#failed[@]} -gt 0 ]; then
  printf '\033[1;31mdeploy check failed (%ss): %s\033[0m\n' "$elapsed" "$(IFS=';'; echo "${failed[*]}")"
  exit 1
fi
printf '\033[1;32mdeploy check passed (%ss)\033[0m\n' "$elapsed"
