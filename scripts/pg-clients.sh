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

usable() {
  local tool
  for tool in pg_dump pg_restore psql; do
    [ -x "$1/bin/$tool" ] && LD_BIND_NOW=1 "$1/bin/$tool" --version >/dev/null 2>&1 || return 1
  done
}

suite_of() { case $1 in 17) echo trixie ;; 18) echo forky ;; *) echo "no Debian suite known for client $1" >&2; exit 1 ;; esac; }

for major in "${majors[@]}"; do
  dir="$root/$major"
  # Reuse a fetched client only when every tool resolves all its symbols now (LD_BIND_NOW): a wrapper whose libpq
  # cannot be found falls back to the system's older libpq and fails at its first call, not at --version.
  if usable "$dir"; then echo "$major $dir/bin"; continue; fi
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
  # libpq of the same major, copied out of the npm package so the client does not depend on this checkout's path.
  (cd "node_modules/pg$major" && node scripts/hydrate-symlinks.js)
  cp -a "node_modules/pg$major/native/lib" "$dir/lib"
  libs="$dir/root/usr/lib/x86_64-linux-gnu:$dir/lib"
  for tool in pg_dump pg_restore psql; do
    cat >"$dir/bin/$tool" <<WRAP
#!/bin/sh
exec "$dir/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$libs" "$dir/root/usr/lib/postgresql/$major/bin/$tool" "\$@"
WRAP
    chmod 755 "$dir/bin/$tool"
  done
  usable "$dir" || { echo "client tools $major were fetched but do not run" >&2; exit 1; }
  echo "$major $dir/bin"
done
