#!/usr/bin/env bash
# The platform's one entry point on a Debian/Ubuntu machine.
#   ./dev.sh up        install what is missing, start PostgreSQL and NATS JetStream, build and
#                      start the whole platform in the background; prints where it listens
#   ./dev.sh test      make sure PostgreSQL and NATS run, then run the whole test suite
#   ./dev.sh down      stop the platform started by `up`
#   ./dev.sh bench [N] [C] [--vs-restate] [--seed S]   the benchmark against the running platform (and the Restate peer)
#   ./dev.sh demo breaker [...]  the seed's circuit-breaking demonstration (siege, against `up`)
#   ./dev.sh demo cluster [...]  3-node JetStream cluster, a node SIGKILLed mid-load: lost=0 duplicates=0
#   ./dev.sh demo zero-downtime [...]  rolling restart behind nginx under siege -c2: availability=100.00%
#   ./dev.sh demo mypage-load    siege -c150 -t20S on one Mypage row (against `up`)
#   ./dev.sh screenshot [PATH]  headless Chromium screenshot of the running platform's saga page
#   ./dev.sh tokens    print the local API tokens (made by `up`, in .run/api-tokens.json)
#   ./dev.sh services  only install and start PostgreSQL, NATS and MariaDB (what CI needs)
set -euo pipefail
cd "$(dirname "$0")"
RUN_DIR="$PWD/.run"
mkdir -p "$RUN_DIR"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_toolchain() {
  if ! command -v cc >/dev/null; then say "installing a C compiler"; apt_install build-essential; fi
  if ! command -v curl >/dev/null; then apt_install curl ca-certificates; fi
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
  if ! command -v cargo >/dev/null; then
    say "installing Rust (rustup)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null; then say "installing PostgreSQL"; apt_install postgresql; fi
  if ! tcp_open 5432; then
    say "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
    for _ in $(seq 1 50); do tcp_open 5432 && break; sleep 0.2; done
  fi
  # The platform connects over TCP. Where the local server does not trust loopback (a fresh
  # Debian install asks for a password), make a local role with a development password.
  if psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
    ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    say "creating the local role 'saga' (PostgreSQL does not trust loopback here)"
    as_root su postgres -c "psql -qc \"DO \\\$\\\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'saga') THEN CREATE ROLE saga LOGIN CREATEDB PASSWORD 'saga-local-dev'; END IF; END\\\$\\\$\"" >/dev/null
    ADMIN_URL="postgres://saga:saga-local-dev@127.0.0.1:5432/postgres"
  fi
  export SAGA_TEST_DATABASE_URL="${SAGA_TEST_DATABASE_URL:-$ADMIN_URL}"
  export SAGA_DATABASE_URL="${SAGA_DATABASE_URL:-${ADMIN_URL%/postgres}/saga}"
  if ! psql "$ADMIN_URL" -Atqc "select 1 from pg_database where datname = 'saga'" | grep -q 1; then
    psql "$ADMIN_URL" -qc 'CREATE DATABASE saga' >/dev/null
  fi
}

ensure_nats() {
  if ! command -v nats-server >/dev/null; then say "installing nats-server"; apt_install nats-server; fi
  if ! tcp_open 4222; then
    say "starting nats-server with JetStream"
    local store=/var/lib/nats-server
    [ -w "$(dirname "$store")" ] || store="$RUN_DIR/nats"
    mkdir -p "$store"
    nohup "$(command -v nats-server)" -a 127.0.0.1 -p 4222 -js -sd "$store" \
      -l "$RUN_DIR/nats-server.log" >/dev/null 2>&1 &
    for _ in $(seq 1 50); do tcp_open 4222 && break; sleep 0.2; done
  fi
  tcp_open 4222 || { echo "nats-server did not start; see $RUN_DIR/nats-server.log" >&2; exit 1; }
}

ensure_mariadb() {
  if ! command -v mariadbd >/dev/null; then say "installing MariaDB"; apt_install mariadb-server mariadb-client; fi
  if ! tcp_open 3306; then
    say "starting MariaDB"
    as_root mkdir -p /run/mysqld
    as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    as_root start-stop-daemon --start --oknodo --background --exec "$(command -v mariadbd)" -- --user=mysql
    for _ in $(seq 1 100); do tcp_open 3306 && break; sleep 0.2; done
  fi
  tcp_open 3306 || { echo "MariaDB did not start" >&2; exit 1; }
  # The platform connects over TCP. A fresh Debian install lets root in only through the local
  # socket: make a local role with a development password then.
  if mariadb -h 127.0.0.1 -P 3306 -u root -e 'select 1' >/dev/null 2>&1; then
    MARIADB_URL="mysql://root@127.0.0.1:3306"
  else
    say "creating the local MariaDB user 'saga' (root has no TCP login here)"
    as_root mariadb -e "CREATE USER IF NOT EXISTS 'saga'@'127.0.0.1' IDENTIFIED BY 'saga-local-dev'; \
      GRANT ALL PRIVILEGES ON *.* TO 'saga'@'127.0.0.1'; FLUSH PRIVILEGES;" >/dev/null
    MARIADB_URL="mysql://saga:saga-local-dev@127.0.0.1:3306"
  fi
  export SAGA_TEST_MARIADB_URL="${SAGA_TEST_MARIADB_URL:-$MARIADB_URL}"
  export SAGA_MYPAGE_DATABASE_URL="${SAGA_MYPAGE_DATABASE_URL:-$MARIADB_URL/mypage}"
  local admin="${MARIADB_URL#mysql://}" user pass host
  user="${admin%%@*}"; host="${admin#*@}"; pass=""
  case "$user" in *:*) pass="${user#*:}"; user="${user%%:*}";; esac
  mariadb -h "${host%%:*}" -P "${host##*:}" -u "$user" ${pass:+-p"$pass"} \
    -e 'CREATE DATABASE IF NOT EXISTS mypage' >/dev/null
}

services() {
  ensure_postgres
  ensure_nats
  ensure_mariadb
}

# The platform's own nats-server: the repository's configuration (deploy/nats/nats-server.conf,
# one user per service with least privilege), its passwords made once in
# .run/nats-passwords.env (never printed), on its own port.
PLATFORM_NATS_PORT="${SAGA_PLATFORM_NATS_PORT:-4223}"
NATS_PASSWORDS="$RUN_DIR/nats-passwords.env"

ensure_platform_nats() {
  if [ ! -s "$NATS_PASSWORDS" ]; then
    say "making the platform's NATS passwords (.run/nats-passwords.env)"
    ( umask 077
      for user in ORCHESTRATOR MISSION REWARD WALLET GIFT TELEGRAM MYPAGE OBSERVER; do
        echo "NATS_${user}_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
      done >"$NATS_PASSWORDS" )
  fi
  set -a; . "$NATS_PASSWORDS"; set +a
  if ! tcp_open "$PLATFORM_NATS_PORT"; then
    say "starting the platform's nats-server on 127.0.0.1:$PLATFORM_NATS_PORT (one user per service)"
    mkdir -p "$RUN_DIR/nats-platform"
    nohup nats-server -c deploy/nats/nats-server.conf -a 127.0.0.1 -p "$PLATFORM_NATS_PORT" \
      -sd "$RUN_DIR/nats-platform" -l "$RUN_DIR/nats-platform.log" >/dev/null 2>&1 &
    echo $! >"$RUN_DIR/nats-platform.pid"
    for _ in $(seq 1 50); do tcp_open "$PLATFORM_NATS_PORT" && break; sleep 0.2; done
  fi
  tcp_open "$PLATFORM_NATS_PORT" || { echo "the platform's nats-server did not start; see $RUN_DIR/nats-platform.log" >&2; exit 1; }
  export SAGA_NATS_URL="nats://127.0.0.1:$PLATFORM_NATS_PORT"
}

TOKENS="$RUN_DIR/api-tokens.json"
TOKEN_HASHES="$RUN_DIR/api-token-hashes.json"

# The local API tokens, one per scope, made once: the tokens themselves for you in
# .run/api-tokens.json, only their SHA-256 for the platform in .run/api-token-hashes.json.
ensure_tokens() {
  if [ -s "$TOKENS" ] && [ -s "$TOKEN_HASHES" ] && grep -q '"notify"' "$TOKENS"; then return; fi
  say "making local API tokens (.run/api-tokens.json)"
  local name scope token entries="" values=""
  umask 077
  for pair in game:game reader:read operator:operate admin:admin notify:notify; do
    name="${pair%%:*}"; scope="${pair#*:}"
    token="$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    values="$values${values:+,}
  \"$name\": \"$token\""
    entries="$entries${entries:+,}
  {\"name\": \"local-$name\", \"sha256\": \"$(printf %s "$token" | sha256sum | cut -d' ' -f1)\", \"scopes\": [\"$scope\"]}"
  done
  printf '{%s\n}\n' "$values" >"$TOKENS"
  printf '{"tokens": [%s\n]}\n' "$entries" >"$TOKEN_HASHES"
}

token_of() { sed -n "s/^ *\"$1\": \"\([^\"]*\)\".*/\1/p" "$TOKENS"; }

up() {
  ensure_toolchain
  services
  ensure_platform_nats
  ensure_tokens
  ensure_autovacuum
  say "building the platform (release)"
  cargo build --release --quiet -p saga-platform -p sagactl --bin saga-platform --bin saga-bench \
    --bin saga-demo --bin sagactl
  down quiet
  say "starting the platform"
  cat >"$RUN_DIR/platform.env" <<ENV
# The settings ./dev.sh up started the platform with (no secrets: the passwords are in
# .run/nats-passwords.env, the API tokens in .run/api-tokens.json).
SAGA_NATS_URL=$SAGA_NATS_URL
SAGA_DATABASE_URL=$(printf %s "$SAGA_DATABASE_URL" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#')
SAGA_MYPAGE_DATABASE_URL=$(printf %s "$SAGA_MYPAGE_DATABASE_URL" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#')
SAGA_API_TOKENS_FILE=$TOKEN_HASHES
SAGA_GATEWAY_ADDR=${SAGA_GATEWAY_ADDR:-127.0.0.1:8080}
ENV
  SAGA_DATABASE_URL="$SAGA_DATABASE_URL" SAGA_API_TOKENS_FILE="$TOKEN_HASHES" \
    SAGA_GIFT_SERVICE_TOKEN="$(token_of notify)" nohup target/release/saga-platform \
    >"$RUN_DIR/platform.log" 2>&1 &
  echo $! >"$RUN_DIR/platform.pid"
  local base="http://${SAGA_GATEWAY_ADDR:-127.0.0.1:8080}"
  for _ in $(seq 1 100); do
    if curl -fsS "$base/readyz" >/dev/null 2>&1; then
      cat <<MSG

The reward saga platform is up.
  API (every service):   $base
  NATS (with users):     $SAGA_NATS_URL   (settings in .run/platform.env)
  API tokens:            $TOKENS  (one per scope: game, reader, operator, admin, notify)
                         e.g. ADMIN=\$(./dev.sh tokens admin)
                              curl -H "Authorization: Bearer \$ADMIN" $base/v1/sagas
  Saga page:             $base/ui   (log in with the reader, operator or admin token)
  Command line:          $PWD/target/release/sagactl   (inside the checkout it finds .run/ by itself)
                         e.g. export PATH="$PWD/target/release:\$PATH"; sagactl list
                              source <(sagactl completions bash)
  OpenAPI document:      $base/openapi.json
  Telegram stand-in:     http://${SAGA_STAND_IN_ADDR:-127.0.0.1:8081}   (no SAGA_TELEGRAM_BOT_TOKEN set)
  Log:                   $RUN_DIR/platform.log
  Stop it with:          ./dev.sh down
MSG
      return 0
    fi
    if ! kill -0 "$(cat "$RUN_DIR/platform.pid")" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "the platform did not become ready; its log:" >&2
  tail -n 30 "$RUN_DIR/platform.log" >&2
  exit 1
}

down() {
  local pidfile="$RUN_DIR/platform.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 100); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    [ "${1:-}" = quiet ] || say "platform stopped"
  fi
  rm -f "$pidfile"
  if [ "${1:-}" != quiet ] && [ -f "$RUN_DIR/nats-platform.pid" ]; then
    kill "$(cat "$RUN_DIR/nats-platform.pid")" 2>/dev/null || true
    rm -f "$RUN_DIR/nats-platform.pid"
  fi
}

ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    say "installing Chromium and chromedriver (for the saga page's browser test)"
    apt_install chromium chromium-driver
  fi
}

ensure_prometheus() {
  if [ ! -x /usr/bin/promtool ] || [ ! -x /usr/bin/prometheus ]; then
    say "installing Prometheus (promtool and a server for the alert and dashboard tests)"
    apt_install prometheus
  fi
}

run_tests() {
  ensure_toolchain
  services
  ensure_chromium
  ensure_prometheus
  # The chaos test runs the service binaries as separate processes: build them first.
  cargo build --workspace --bins
  cargo test --workspace --all-targets
}

screenshot() {
  ensure_toolchain
  ensure_chromium
  cargo build --release --quiet -p saga-tests --bin saga-screenshot
  target/release/saga-screenshot --base-url "http://${SAGA_GATEWAY_ADDR:-127.0.0.1:8080}" \
    --token "$(token_of reader)" --path "${1:-/ui}" --out "$RUN_DIR/saga-page.png"
}

# The platform rewrites its saga, timer, inbox and outbox rows at every step: it needs
# PostgreSQL's autovacuum (on by default; some CI configurations turn it off). Without it dead
# rows pile up and every step slows down.
ensure_autovacuum() {
  if [ "$(psql "$ADMIN_URL" -Atqc 'SHOW autovacuum' 2>/dev/null)" = off ]; then
    say "turning PostgreSQL's autovacuum on (the local configuration turned it off)"
    psql "$ADMIN_URL" -qc 'ALTER SYSTEM SET autovacuum = on' -c 'SELECT pg_reload_conf()' >/dev/null 2>&1 \
      || say "PostgreSQL refused (not a superuser): run it with autovacuum = on"
  fi
}

# PostgreSQL's statement statistics (pg_stat_statements), which the benchmark reads: loaded
# once into the local server (a restart of PostgreSQL), where the admin role may.
ensure_statement_stats() {
  local loaded
  loaded=$(psql "$ADMIN_URL" -Atqc 'SHOW shared_preload_libraries' 2>/dev/null || true)
  case "$loaded" in
    *pg_stat_statements*) ;;
    *)
      say "loading pg_stat_statements into PostgreSQL (restarts it once)"
      if psql "$ADMIN_URL" -qc "ALTER SYSTEM SET shared_preload_libraries = '${loaded:+$loaded,}pg_stat_statements'" >/dev/null 2>&1; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main restart
        for _ in $(seq 1 50); do psql "$ADMIN_URL" -Atqc 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
      else
        say "PostgreSQL refused (not a superuser): the benchmark prints no statements per saga"
      fi ;;
  esac
  psql "$ADMIN_URL" -qc 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null 2>&1 || true
}

# ./dev.sh bench [N] [C] [--vs-restate] [--seed S]: warm-up, N sagas at concurrency C, then 200
# one at a time; with --vs-restate the Restate peer (../shared/peers/restate/run.sh) after it,
# same sizes; with --seed S, S more finished sagas stored first.
bench() {
  ensure_toolchain
  ensure_postgres
  local sizes=() extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --vs-restate)
        local peer="${SAGA_RESTATE_PEER:-$PWD/../shared/peers/restate/run.sh}"
        [ -f "$peer" ] || { echo "the Restate peer is not at $peer (set SAGA_RESTATE_PEER)" >&2; exit 1; }
        command -v node >/dev/null || apt_install nodejs npm
        # The peer's default ports lie in Linux's ephemeral range, where the platform's own
        # connections can hold them: ports above it instead.
        export INGRESS_PORT="${INGRESS_PORT:-61080}" ADMIN_PORT="${ADMIN_PORT:-61070}" \
          FABRIC_PORT="${FABRIC_PORT:-61122}" SERVICE_PORT="${SERVICE_PORT:-61180}" \
          FAKE_TG_PORT="${FAKE_TG_PORT:-61999}"
        extra+=(--vs-restate "$peer") ;;
      --seed) extra+=(--seed-finished "${2:?--seed needs a count}"); shift ;;
      *) sizes+=("$1") ;;
    esac
    shift
  done
  [ -f "$RUN_DIR/platform.pid" ] && kill -0 "$(cat "$RUN_DIR/platform.pid")" 2>/dev/null \
    || { echo "the platform is not running: ./dev.sh up first" >&2; exit 1; }
  ensure_statement_stats
  # A restart of PostgreSQL above: wait until the platform answers again.
  for _ in $(seq 1 100); do
    curl -fsS "http://${SAGA_GATEWAY_ADDR:-127.0.0.1:8080}/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  cargo build --release --quiet -p saga-platform --bin saga-bench
  target/release/saga-bench --base-url "http://${SAGA_GATEWAY_ADDR:-127.0.0.1:8080}" \
    --token "$(token_of admin)" --sagas "${sizes[0]:-2000}" --concurrency "${sizes[1]:-50}" \
    --admin-url "$ADMIN_URL" --nats-pid-file "$RUN_DIR/nats-platform.pid" "${extra[@]}"
}

demo() {
  ensure_toolchain
  local which="${1:-breaker}"
  shift || true
  case "$which" in
    breaker)
      command -v siege >/dev/null || apt_install siege
      cargo build --release --quiet -p saga-platform --bin saga-demo
      target/release/saga-demo breaker --base-url "http://${SAGA_GATEWAY_ADDR:-127.0.0.1:8080}" \
        --token "$(token_of admin)" "$@" ;;
    cluster)
      command -v nats-server >/dev/null || apt_install nats-server
      ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
      cargo build --release --quiet --workspace --bins
      target/release/saga-cluster-demo --bin-dir target/release "$@" ;;
    zero-downtime)
      command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
      command -v siege >/dev/null || apt_install siege
      command -v nats-server >/dev/null || apt_install nats-server
      ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
      cargo build --release --quiet --workspace --bins
      target/release/saga-rollout-demo --bin-dir target/release "$@" ;;
    mypage-load)
      # The seed's autoscaling load: siege -c150 -t20S on one Mypage row, through the gateway.
      command -v siege >/dev/null || apt_install siege
      local base="http://${SAGA_GATEWAY_ADDR:-127.0.0.1:8080}" game reader customer mission
      game="$(token_of game)"; reader="$(token_of reader)"
      customer="siege-$(date +%s)"
      # A customer with a chat and a mission, paid by a saga: its Mypage row exists.
      curl -fsS -X PUT "$base/v1/telegram/chats/$customer" -H "Authorization: Bearer $game" \
        -H 'content-type: application/json' -d '{"chat_id": 424242}' >/dev/null
      mission="$(curl -fsS -X POST "$base/v1/missions" -H "Authorization: Bearer $game" \
        -H 'content-type: application/json' \
        -d "{\"customer_id\": \"$customer\", \"title\": \"Siege the castle\", \"reward_points\": 10}" \
        | sed -E 's/.*"id":"([^"]+)".*/\1/')"
      curl -fsS -X POST "$base/v1/sagas" -H "Authorization: Bearer $game" \
        -H 'content-type: application/json' -H "Idempotency-Key: siege-$mission" \
        -d "{\"type\": \"mission_reward\", \"input\": {\"mission_id\": \"$mission\"}}" >/dev/null
      for _ in $(seq 1 100); do
        curl -fsS -H "Authorization: Bearer $reader" "$base/v1/mypages/$mission" 2>/dev/null \
          | grep -q '"notification_status":"sent"' && break
        sleep 0.1
      done
      curl -fsS -H "Authorization: Bearer $reader" "$base/v1/mypages/$mission"; echo
      # Verbose output (one line per request) for the percentiles; siege's summary goes to stderr.
      local rc="$RUN_DIR/mypage-siegerc" out="$RUN_DIR/mypage-siege.log"
      printf 'verbose = true\njson_output = false\ncolor = off\nprotocol = HTTP/1.1\ndelay = 0.0\nlimit = 255\n' >"$rc"
      siege -R "$rc" -c150 -t20S -H "Authorization: Bearer $reader" "$base/v1/mypages/$mission" >"$out"
      grep '^HTTP' "$out" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "requests %d  p50 %.3f s  p99 %.3f s  max %.3f s\n", NR, a[int(NR*0.50)], a[int(NR*0.99)], a[NR]}'
      echo "answers other than 200: $(grep '^HTTP' "$out" | awk '$2 != 200' | wc -l)"
      # The projection's lag (event to row) and backlog, as the dashboard shows them.
      curl -fsS -H "Authorization: Bearer $reader" "$base/metrics" \
        | grep -E '^saga_projection_(lag_seconds_(bucket|count)|pending)' ;;
    *) echo "unknown demo $which (breaker, cluster, zero-downtime, mypage-load)" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  test) run_tests ;;
  services) services ;;
  bench) shift; bench "$@" ;;
  screenshot) shift; screenshot "$@" ;;
  demo) shift; demo "$@" ;;
  tokens) shift; if [ -n "${1:-}" ]; then token_of "$1"; else cat "$TOKENS"; fi ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
