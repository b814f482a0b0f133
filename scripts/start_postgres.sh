#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests (Debian's package: apt-get install -y postgresql):
#   scripts/start_postgres.sh DIR PORT    -> prints its URL (postgresql://clinpeft@127.0.0.1:PORT/postgres)
#   scripts/start_postgres.sh --stop DIR
# initdb/pg_ctl refuse to run as root, so as root they run as the `postgres` user (runuser);
# the data directory lives in DIR, trust authentication on 127.0.0.1 only.
set -euo pipefail
if [ "${1:-}" = "--stop" ]; then
  BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$BIN/pg_ctl" -D "$2/data" -m immediate stop >/dev/null
  else "$BIN/pg_ctl" -D "$2/data" -m immediate stop >/dev/null; fi
  exit 0
fi
DIR=${1:?usage: start_postgres.sh DIR PORT}
PORT=${2:-55432}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$BIN/initdb" ] || { echo "PostgreSQL server not installed (apt-get install -y postgresql)" >&2; exit 3; }
mkdir -p "$DIR"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
as_pg "$BIN/initdb" -D "$DIR/data" -U clinpeft --auth=trust >"$DIR/initdb.log" 2>&1
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
  -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" start >/dev/null
echo "postgresql://clinpeft@127.0.0.1:$PORT/postgres"
