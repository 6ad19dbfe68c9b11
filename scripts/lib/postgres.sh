# Sourced by the test scripts: starts a throwaway PostgreSQL server (Debian's packages, installed
# by the caller) in a temporary directory, on 127.0.0.1 only, and exports its URL as
# ZTA_TEST_POSTGRES_URL. `stop_postgres` stops it and removes every file it wrote.

start_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$bin/initdb" ] || { echo "postgres: initdb not found (package postgresql)" >&2; return 1; }
  PG_BIN=$bin
  PG_DIR=$(mktemp -d /tmp/zta-pg.XXXXXX)
  # A port no other instance of this script uses at the same moment.
  PG_PORT=$((20000 + $$ % 20000))
  # PostgreSQL refuses to run as root: the server runs as the `postgres` user then.
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$PG_DIR"
    PG_AS=(su postgres -s /bin/sh -c)
  else
    PG_AS=(sh -c)
  fi
  "${PG_AS[@]}" "'$PG_BIN/initdb' -D '$PG_DIR/data' -A trust -U postgres" >"$PG_DIR/initdb.log" 2>&1 ||
    { cat "$PG_DIR/initdb.log" >&2; return 1; }
  "${PG_AS[@]}" "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -l '$PG_DIR/server.log' -w -t 60 \
    -o \"-p $PG_PORT -k '$PG_DIR' -c listen_addresses=127.0.0.1 -c fsync=off\" start" >/dev/null ||
    { cat "$PG_DIR/server.log" >&2; return 1; }
  export ZTA_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

stop_postgres() {
  [ -n "${PG_DIR:-}" ] || return 0
  "${PG_AS[@]}" "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -m fast -w stop" >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=
}
