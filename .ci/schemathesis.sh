#!/usr/bin/env bash
# schemathesis (PyPI, pinned in .ci/schemathesis-requirements.txt, installed into a venv under
# ~/.cache/saga-platform/ or $SCHEMATHESIS_VENV) against the OpenAPI document a running platform
# serves, with an admin token, every check, and 0 failures allowed.
#
#   bash .ci/schemathesis.sh [extra schemathesis run options]
#
# It builds target/debug/saga-platform, starts it on spare loopback ports with a database of its
# own on the local PostgreSQL (the Mypage view too), a NATS subject and stream prefix of its own
# on the local nats-server, the Telegram stand-in and one admin API token made for the run, runs
# schemathesis against http://127.0.0.1:<port>/openapi.json, then stops the platform by its PID
# and drops the database. Needs PostgreSQL on 127.0.0.1:5432 and nats-server -js on
# 127.0.0.1:4222 (`./dev.sh services`). SCHEMATHESIS_MAX_EXAMPLES (default 100: about 2 minutes
# here, besides the build) bounds the test cases per operation and phase; SCHEMATHESIS_SEED
# (default random, printed at the end) fixes the generated requests. The platform's log and
# schemathesis' reports stay in .run/schemathesis/.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."
ROOT=$PWD
started=$(date +%s)
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# --- tools ---------------------------------------------------------------------------------------
REQUIREMENTS=.ci/schemathesis-requirements.txt
# Outside the checkout, so that CI (a fresh clone each run) installs it once per machine.
VENV=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/saga-platform/schemathesis-venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
  say "installing $REQUIREMENTS"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" >"$VENV/.requirements.sha256"
fi
command -v psql >/dev/null || { echo "psql is needed (./dev.sh services installs PostgreSQL)" >&2; exit 1; }

PLATFORM_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/saga-platform
say "building $PLATFORM_BIN"
cargo build --quiet -p saga-platform --bin saga-platform

# --- the platform --------------------------------------------------------------------------------
OUT=$ROOT/.run/schemathesis
mkdir -p "$OUT"
ADMIN_URL=${SAGA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
NATS_URL=${SAGA_TEST_NATS_URL:-nats://127.0.0.1:4222}
RUN_ID=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
DATABASE=saga_st_$RUN_ID
TOKEN=st-admin-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
HASH=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
spare_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GATEWAY_PORT=$(spare_port)
STAND_IN_PORT=$(spare_port)
while [ "$STAND_IN_PORT" = "$GATEWAY_PORT" ]; do STAND_IN_PORT=$(spare_port); done
BASE=http://127.0.0.1:$GATEWAY_PORT

PLATFORM_PID=""
cleanup() {
  local status=$?
  if [ -n "$PLATFORM_PID" ]; then
    kill "$PLATFORM_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PLATFORM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PLATFORM_PID" 2>/dev/null || true
    wait "$PLATFORM_PID" 2>/dev/null || true
  fi
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" >/dev/null 2>&1 || true
  exit "$status"
}
trap cleanup EXIT

say "creating the database $DATABASE"
psql "$ADMIN_URL" -qc "CREATE DATABASE $DATABASE" >/dev/null
say "starting saga-platform on $BASE (NATS prefix st$RUN_ID)"
(
  # Nothing of a developer's own platform (./dev.sh up) leaks in.
  unset SAGA_API_TOKENS_FILE SAGA_NATS_USER SAGA_NATS_PASSWORD SAGA_NATS_CA_FILE \
    SAGA_MYPAGE_DATABASE_URL SAGA_TELEGRAM_BOT_TOKEN SAGA_TELEGRAM_API_BASE \
    SAGA_GIFT_SERVICE_TOKEN OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
  for user in ORCHESTRATOR MISSION REWARD WALLET GIFT TELEGRAM MYPAGE; do unset "NATS_${user}_PASSWORD"; done
  export SAGA_DATABASE_URL="${ADMIN_URL%/*}/$DATABASE"
  export SAGA_NATS_URL="$NATS_URL"
  export SAGA_NATS_PREFIX="st$RUN_ID"
  export SAGA_GATEWAY_ADDR="127.0.0.1:$GATEWAY_PORT"
  export SAGA_STAND_IN_ADDR="127.0.0.1:$STAND_IN_PORT"
  export SAGA_API_TOKENS="{\"tokens\": [{\"name\": \"schemathesis\", \"sha256\": \"$HASH\", \"scopes\": [\"admin\"]}]}"
  export RUST_LOG=${RUST_LOG:-warn}
  exec "$PLATFORM_BIN"
) >"$OUT/platform.log" 2>&1 &
PLATFORM_PID=$!
for _ in $(seq 1 600); do
  if curl -fsS "$BASE/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$PLATFORM_PID" 2>/dev/null || { echo "saga-platform stopped; its log:" >&2; tail -50 "$OUT/platform.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$BASE/readyz" >/dev/null || { echo "saga-platform is not ready; its log:" >&2; tail -50 "$OUT/platform.log" >&2; exit 1; }

# --- schemathesis --------------------------------------------------------------------------------
say "schemathesis run $BASE/openapi.json (every check)"
status=0
curl -fsS -H "Authorization: Bearer $TOKEN" "$BASE/openapi.json" >"$OUT/openapi.json"
"$VENV/bin/schemathesis" --config-file .ci/schemathesis.toml run "$BASE/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $TOKEN" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-100}" \
  --workers 2 \
  --request-timeout 90 \
  --seed "${SCHEMATHESIS_SEED:-$RANDOM}" \
  --no-color \
  --report junit --report-dir "$OUT/report" \
  "$@" || status=$?
if ! kill -0 "$PLATFORM_PID" 2>/dev/null; then
  echo "saga-platform died during the run; its log:" >&2
  tail -50 "$OUT/platform.log" >&2
  status=1
fi
if grep -q "panicked" "$OUT/platform.log"; then
  echo "saga-platform panicked during the run:" >&2
  grep -A5 "panicked" "$OUT/platform.log" >&2
  status=1
fi
say "schemathesis: exit $status after $(($(date +%s) - started)) s"
exit "$status"
