#!/usr/bin/env bash
# PostgreSQL client tools 17 and 18 for the cross-version tests (Debian bookworm ships 15 only): the packages
# postgresql-client-17 (Debian trixie) and postgresql-client-18 (Debian forky) with the C library of the same
# suite, fetched with apt-get download (nothing is installed on the system) and unpacked under $PG_CLIENTS_DIR.
# Each MAJOR gets $PG_CLIENTS_DIR/MAJOR/bin/{pg_dump,pg_restore,psql}: wrappers that start the real binary
# with that suite's loader and libraries, and libpq of the same major from the npm package pgMAJOR.
#   scripts/pg-clients.sh [MAJOR…]   prints "MAJOR BINDIR" per client
set -euo pipefail
cd "$(dirname "$0")/.."
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(17 18)
root=${PG_CLIENTS_DIR:-/tmp/nself-e2ee-clients}
mkdir -p "$root"

suite_of() { case $1 in 17) echo trixie ;; 18) echo forky ;; *) echo "no Debian suite known for client $1" >&2; exit 1 ;; esac; }

for major in "${majors[@]}"; do
  dir="$root/$major"
  if [ -x "$dir/bin/pg_restore" ] && "$dir/bin/pg_restore" --version >/dev/null 2>&1; then echo "$major $dir/bin"; continue; fi
  suite=$(suite_of "$major")
  apt="$root/apt-$suite"
  rm -rf "$dir" && mkdir -p "$apt/lists/partial" "$dir/debs" "$dir/root" "$dir/bin"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" >"$apt/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache::pkgcache=$apt/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$apt/srcpkgcache.bin" -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" -qq update >/dev/null
  (cd "$dir/debs" && apt-get "${opts[@]}" -qq download "postgresql-client-$major" libc6 liblz4-1 libzstd1 zlib1g >/dev/null)
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  rm -rf "$dir/debs"
  (cd "node_modules/pg$major" && node scripts/hydrate-symlinks.js)
  libs="$dir/root/usr/lib/x86_64-linux-gnu:$PWD/node_modules/pg$major/native/lib"
  for tool in pg_dump pg_restore psql; do
    cat >"$dir/bin/$tool" <<WRAP
#!/bin/sh
exec "$dir/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$libs" "$dir/root/usr/lib/postgresql/$major/bin/$tool" "\$@"
WRAP
    chmod 755 "$dir/bin/$tool"
  done
  "$dir/bin/pg_restore" --version >/dev/null
  echo "$major $dir/bin"
done
