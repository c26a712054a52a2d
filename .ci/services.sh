# Start real Redis and PostgreSQL servers on 127.0.0.1 for the tests (sourced by .ci/run).
# Installs Debian's packages when missing. Exports PAYWARE_TEST_REDIS_URL / _POSTGRES_URL.

PW_SERVICES_DIR=${PW_SERVICES_DIR:-/tmp/payware-ci-services}
PW_REDIS_PORT=${PW_REDIS_PORT:-56379}
PW_PG_PORT=${PW_PG_PORT:-55432}

_apt_install() {
  if [ -z "${_PW_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null
    _PW_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
  command -v redis-server >/dev/null || _apt_install redis-server
  mkdir -p "$PW_SERVICES_DIR/redis"
  if ! redis-cli -p "$PW_REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --port "$PW_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$PW_SERVICES_DIR/redis" --daemonize yes --logfile "$PW_SERVICES_DIR/redis/redis.log"
    for _ in $(seq 50); do redis-cli -p "$PW_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  export PAYWARE_TEST_REDIS_URL="redis://127.0.0.1:$PW_REDIS_PORT/0"
  export PAYWARE_TEST_REDIS_PORT="$PW_REDIS_PORT"
}

start_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    _apt_install postgresql
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  local data="$PW_SERVICES_DIR/pg"
  mkdir -p "$PW_SERVICES_DIR"
  chmod 755 "$PW_SERVICES_DIR"
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data" && chown postgres:postgres "$data"
    runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-p $PW_PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  fi
  runuser -u postgres -- "$bin/psql" -h 127.0.0.1 -p "$PW_PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='payware_test'" | grep -q 1 \
    || runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$PW_PG_PORT" -U postgres payware_test
  export PAYWARE_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$PW_PG_PORT/payware_test"
}
